import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llavatune.errors import LlavatuneError
from llavatune.model.save import write_atomically


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("kept")

    def crash(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        write_atomically(out, True, crash)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (out / "old.txt").read_text() == "kept"
    with pytest.raises(LlavatuneError, match="--overwrite"):
        write_atomically(out, False, lambda folder: None)


def test_the_writers_refuse_a_hub_name_as_the_cli_does(tmp_path, monkeypatch):
    """The Python API (build.main, merge.main, ...) reaches the writers without the CLI's --out check."""
    from llavatune.data.pack import atomic_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(LlavatuneError, match="outputs are written here, not to the hub"):
        write_atomically(Path("hf://datasets/me/model"), False, lambda folder: None)
    with pytest.raises(LlavatuneError, match="outputs are written here, not to the hub"):
        with atomic_file(Path("hf://datasets/me/qa.json")):
            pass
    assert not list(tmp_path.iterdir())


def test_a_write_that_fills_the_disk_says_so_in_one_line(tmp_path, monkeypatch):
    """torch.save on a full disk raises a RuntimeError about inline_container.cc (safetensors its own error): the
    run stopped with that, not knowing why. The space left is said, and that nothing was lost."""
    import collections

    from llavatune.model import save

    out = tmp_path / "checkpoint-200"
    out.mkdir()
    (out / "old.txt").write_text("kept")

    def full(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(save.shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - (3 << 20), 3 << 20))
    with pytest.raises(LlavatuneError, match=r"checkpoint-200: not written, 3 MB are left on its disk \(\[enforce "
                                             r"fail.*file write failed\)\. Nothing half-written stays.*resume=auto"):
        write_atomically(out, True, full)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-200"] and (out / "old.txt").read_text() == "kept"


def test_saving_on_a_cpu_machine_is_quiet_where_deepspeed_is_installed(tiny_model_dir, tmp_path):
    """accelerate imports DeepSpeed on every save_pretrained; unprepared, DeepSpeed warns on a machine with no GPU
    that it could not find one, on every build, merge, convert and full checkpoint."""
    pytest.importorskip("deepspeed")
    script = textwrap.dedent(f"""
        import sys
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        from llavatune.model.save import save_pretrained_clean
        model = LlavaForConditionalGeneration.from_pretrained({str(tiny_model_dir)!r})
        processor = AutoProcessor.from_pretrained({str(tiny_model_dir)!r})
        save_pretrained_clean(model, processor, {str(tmp_path / "saved")!r})
        assert "deepspeed" in sys.modules, "accelerate no longer imports DeepSpeed on save: this test checks nothing"
    """)
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU machine, even on a GPU runner
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unable to detect it" not in result.stderr + result.stdout
    assert "Writing model shards" not in result.stderr  # transformers' bar, a line at every checkpoint of a run
    assert (tmp_path / "saved" / "model.safetensors").exists()


def test_saving_leaves_the_callers_progress_bars_on(tiny_model_dir, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from llavatune.model.save import save_model

    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    hf_logging.enable_progress_bar()
    save_model(model, AutoProcessor.from_pretrained(tiny_model_dir), tmp_path / "saved")
    assert hf_logging.is_progress_bar_enabled() and (tmp_path / "saved" / "model.safetensors").exists()
