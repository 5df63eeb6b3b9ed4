from __future__ import annotations

import pytest
from PIL import Image

from llavatune.data.formats import DataError
from llavatune.data.images import load, resolve


def test_paths_cannot_leave_the_folder(tmp_path):
    assert resolve("a/b.png", tmp_path, "f:1") == tmp_path / "a/b.png"
    for bad in ("../x.png", "/etc/passwd", "a/../../x.png"):
        with pytest.raises(DataError, match="leaves the image folder"):
            resolve(bad, tmp_path, "f:1")


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load("r.jpg", tmp_path, "f:1").size == (20, 40)


def test_grey_and_rgba_become_rgb_and_bad_files_name_the_row(tmp_path):
    Image.new("LA", (4, 4)).save(tmp_path / "g.png")
    assert load("g.png", tmp_path, "f:1").mode == "RGB"
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="f:7: image 'bad.png' cannot be decoded"):
        load("bad.png", tmp_path, "f:7")
    with pytest.raises(DataError, match="f:8: image 'none.png' not found"):
        load("none.png", tmp_path, "f:8")


def test_processor_pads_with_the_mean_colour_like_llava(tiny_model_dir):
    """LLaVA-1.5 expand2square: pad to a square with the image-mean colour, then resize."""
    import numpy as np
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    ip = processor.image_processor
    wide = Image.new("RGB", (64, 32), (10, 200, 30))
    mean = tuple(int(x * 255) for x in ip.image_mean)
    square = Image.new("RGB", (64, 64), mean)
    square.paste(wide, (0, 16))
    padded = ip(wide, return_tensors="np")["pixel_values"]
    manual = ip(square, do_pad=False, return_tensors="np")["pixel_values"]
    assert np.allclose(padded, manual, atol=1e-5)
