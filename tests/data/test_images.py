from __future__ import annotations

import pytest
from PIL import Image

from llavatune.data.formats import DataError, Record
from llavatune.data.images import check, check_most_found, check_root, exists, load, resolve


def test_paths_cannot_leave_the_folder(tmp_path):
    assert resolve("a/b.png", tmp_path, "f:1") == tmp_path / "a/b.png"
    for bad in ("../x.png", "/etc/passwd", "a/../../x.png"):
        with pytest.raises(DataError, match="leaves the image folder"):
            resolve(bad, tmp_path, "f:1")


def test_a_folder_without_most_of_the_images_is_an_error_at_once(tmp_path):
    """A few missing images are for the run to skip; a folder that the paths are not relative to is said first."""
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    rows = [Record(str(k), [("user", "<image>")], [name], f"d.json:{k + 1}")
            for k, name in enumerate(["a.png", "b.png", "gone.png", "../a.png"])]
    check_most_found(rows[:3], tmp_path)  # 2 of 3 there
    check_most_found(rows, tmp_path)  # 2 of 4: half
    with pytest.raises(DataError, match=r"images=.*: 2 of 3 images checked are not there \(the first: d.json:3: "
                                        r"'gone.png'\)\. images names the folder"):
        check_most_found(rows[1:], tmp_path)  # one path leaves the folder: it counts as not there
    many = [Record(str(k), [("user", "<image>")], ["a.png" if k % 7 else "gone.png"], "") for k in range(1000)]
    check_most_found(many, tmp_path)  # 50 of the 1,000 looked at, spread over them
    check_most_found([Record("t", [("user", "hi")])], None)  # no folder: check_folder_given's to say


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
    Image.new("1", (15000, 15000)).save(tmp_path / "huge.png")  # 27 KB, 225 million pixels: PIL refuses it
    for read in (load, check):
        with pytest.raises(DataError, match=r"f:9: image 'huge.png' cannot be decoded \(Image size"):
            read("huge.png", tmp_path, "f:9")


def test_images_are_read_from_a_zip_archive_as_from_a_folder(tmp_path):
    """images=images.zip (LLaVA-Pretrain ships its 558K images so): members read in place, never outside."""
    import zipfile

    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "red.png", "00453/red.png")
    assert load("00453/red.png", archive, "f:1").getpixel((0, 0)) == (255, 0, 0)
    check("00453/./red.png", archive, "f:1")
    assert exists("00453/red.png", archive, "f:1") and not exists("00453/blue.png", archive, "f:1")
    with pytest.raises(DataError, match=r"f:2: image 'red.png' not found in \S*images.zip \(its names look like "
                                        r"'00453/red.png'\)"):
        load("red.png", archive, "f:2")
    for ref in ("../red.png", "/00453/red.png", "00453/../../red.png"):
        with pytest.raises(DataError, match=f"f:3: image path '{ref}' leaves the image folder"):
            exists(ref, archive, "f:3")
    check_root(archive)
    with pytest.raises(DataError, match="images=.*none.zip: no such folder or .zip archive"):
        check_root(tmp_path / "none.zip")


def test_a_relative_folder_is_found_from_the_working_directory_of_the_moment(tmp_path, monkeypatch):
    """What the image folder is (folder, archive, table) is worked out once per folder, not per row; a relative
    folder names another place after a change of directory, and is looked up there."""
    for side, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (tmp_path / side / "images").mkdir(parents=True)
        Image.new("RGB", (4, 4), colour).save(tmp_path / side / "images" / f"{side}.png")
    for side, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        monkeypatch.chdir(tmp_path / side)
        other = "a.png" if side == "b" else "b.png"
        assert exists(f"{side}.png", "images", "f:1") and not exists(other, "images", "f:1")
        assert load(f"{side}.png", "images", "f:1").getpixel((0, 0)) == colour


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


@pytest.mark.parametrize("aspect", ["pad", "crop", "resize"])
def test_presize_gives_the_processors_own_pixel_values(aspect):
    """pixels() pads and resizes in PIL before the processor: the tensor must be the processor's, bit for bit,
    for wide, tall, square, odd-sized, smaller-than-target images and a JPEG photo."""
    import io

    import numpy as np
    import torch

    from llavatune.data.images import pixels, presize
    from llavatune.model.compose import _image_processor

    ip = _image_processor(30, aspect, [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    rng = np.random.default_rng(0)
    shapes = [(97, 41), (41, 97), (64, 64), (17, 9), (30, 31), (301, 123)]  # (width, height)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in shapes]
    buffer = io.BytesIO()
    photos[-1].save(buffer, format="JPEG")
    photos.append(Image.open(buffer).convert("RGB"))
    for photo in photos:
        assert min(presize(photo, ip).size) == 30  # the fast path was taken
        expected = ip(photo, return_tensors="pt")["pixel_values"]
        assert torch.equal(pixels([photo], ip), expected), (aspect, photo.size)


def test_presize_leaves_unknown_processors_alone():
    from transformers import CLIPImageProcessor

    from llavatune.data.images import presize

    class Other(CLIPImageProcessor):  # a subclass may do anything: not ours to guess
        pass

    photo = Image.new("RGB", (50, 20))
    assert presize(photo, Other()) is photo
    assert presize(photo.convert("L"), Other()).mode == "L"


def test_images_are_read_by_id_from_a_table_of_images(tmp_path):
    """images=TABLE (lmms-lab/GQA keeps its images so: columns id, image; its questions name them by imageId): a
    row's image is looked up by id, in a file or in the shards a pattern names; an id not there is missing (as
    `data validate` counts it), and a table without an id column is said to be the wrong kind."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    for k, (ident, colour) in enumerate([("n161313", (255, 0, 0)), ("n235859", (0, 0, 255))]):
        pq.write_table(pa.Table.from_pylist([{"id": ident, "image": png(colour)}]), tmp_path / f"testdev-{k}.parquet")
    table = tmp_path / "testdev-*.parquet"
    check_root(table)
    assert load("n235859", table, "f:1").getpixel((0, 0)) == (0, 0, 255)
    assert load("n161313", tmp_path / "testdev-0.parquet", "f:1").getpixel((0, 0)) == (255, 0, 0)
    assert exists("n161313", table, "f:1") and not exists("n000000", table, "f:1")
    with pytest.raises(DataError, match=r"f:2: image 'n000000' not found in \S*testdev-\*.parquet \(its ids look like "
                                        r"'n161313'\)"):
        check("n000000", table, "f:2")
    with pytest.raises(DataError, match=r"images=\S*test-\*.parquet: no file matches"):
        check_root(tmp_path / "test-*.parquet")
    pq.write_table(pa.Table.from_pylist([{"name": "n1", "image": png((0, 0, 0))}]), tmp_path / "named.parquet")
    with pytest.raises(DataError, match=r"named.parquet:1: a table given as the image folder holds images by id, in "
                                        r"columns 'id' and 'image' \(bytes\); found name, image"):
        load("n1", tmp_path / "named.parquet", "f:3")
