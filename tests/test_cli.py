"""The command line: verbs listed, examples in every --help, one-line errors with a non-zero exit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from llavatune.cli import app, run

VERBS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
SUBVERBS = sorted(f"{g.name} {c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands)


def call(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_help_lists_every_verb(capsys):
    code, out, _ = call(["--help"], capsys)
    assert code == 0
    for verb in VERBS + [g.name for g in app.registered_groups]:
        assert verb in out
    assert len(SUBVERBS) == 16


@pytest.mark.parametrize("verb", VERBS + SUBVERBS)
def test_every_verb_help_has_an_example(verb, capsys):
    code, out, _ = call([*verb.split(), "--help"], capsys)
    assert code == 0 and "Example" in out and f"llavatune {verb}" in out


def one_line_error(argv, capsys, match):
    code, _, err = call(argv, capsys)
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err


def test_llm_that_is_not_a_causal_lm(tiny_parts_dir, tmp_path, capsys):
    one_line_error(["build", "--llm", str(tiny_parts_dir / "vision-clip"), "--vision",
                    str(tiny_parts_dir / "vision-clip"), "--out", str(tmp_path / "o")], capsys,
                   "not a causal language model")


def test_vision_that_is_not_an_encoder(tiny_parts_dir, tmp_path, capsys, monkeypatch):
    from llavatune.model import compose

    def llm_loaded(*_):
        raise AssertionError("the LLM (minutes for a 7B one) was loaded before the encoder was checked")

    monkeypatch.setattr(compose, "load_llm", llm_loaded)
    one_line_error(["build", "--llm", str(tiny_parts_dir / "llm-llama"), "--vision",
                    str(tiny_parts_dir / "llm-llama"), "--out", str(tmp_path / "o")], capsys,
                   "not a vision encoder")


def test_missing_folder(tmp_path, capsys):
    one_line_error(["build", "--llm", str(tmp_path / "nope"), "--vision", str(tmp_path / "nope"),
                    "--out", str(tmp_path / "o")], capsys, "cannot read a model config")


def test_unknown_projector(tmp_path, capsys):
    one_line_error(["build", "--preset", "tiny", "--projector", "conv3", "--out", str(tmp_path / "o")], capsys,
                   "unknown projector 'conv3'")


def test_out_not_empty_unless_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, out)
    one_line_error(["build", "--preset", "tiny", "--out", str(out)], capsys, "exists and is not empty")
    run_ok = ["build", "--preset", "tiny", "--out", str(out), "--overwrite"]
    with pytest.raises(SystemExit) as exit_info:
        run(run_ok)
    assert exit_info.value.code in (0, None)


def _params(verb: str) -> list[str]:
    command = typer.main.get_command(app)
    for word in verb.split():
        command = command.commands[word]
    return [p.name for p in command.params]


OUT_VERBS = [v for v in VERBS + SUBVERBS if "out" in _params(v)]


@pytest.mark.parametrize("argv", [[*v.split(), "--out", "hf://datasets/me/x/y.json"] for v in OUT_VERBS]
                         + [["convert", "models/a", "hf://datasets/me/x"], ["train", "t.yaml", "out=hf://me/x"],
                            ["data", "convert", "qa.parquet", "--to", "llava", "--images", "hf://datasets/me/x",
                             "--out", "qa.json"]])
def test_an_output_on_the_hub_is_refused_not_written_to_a_local_hf_folder(argv, tmp_path, monkeypatch, capsys):
    """Path('hf://datasets/me/x') reads 'hf:/datasets/me/x': every verb wrote there, quietly, before."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.yaml").write_text("model: models/a\ndata: qa.json\n")
    (tmp_path / "qa.parquet").write_bytes(b"")
    one_line_error(argv, capsys, "outputs are written here, not to the hub. Give a local path")
    assert not (tmp_path / "hf:").exists()


def test_unknown_override_key(tmp_path, capsys):
    one_line_error(["build", "--preset", "tiny", "--out", str(tmp_path / "o"), "projektor=linear"], capsys,
                   "Did you mean 'projector'")


def test_debug_shows_the_traceback(tmp_path):
    """Through the installed console script: --debug lets the exception through."""
    exe = str(Path(sys.executable).parent / "llavatune")
    args = ["info", str(tmp_path / "no-model")]
    plain = subprocess.run([exe, *args], capture_output=True, text=True)
    debug = subprocess.run([exe, "--debug", *args], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_debug_reaches_the_launched_processes(tmp_path):
    """`--procs 2` re-runs `llavatune train` under torchrun: the processes' one-line errors are not buried under
    torchrun's traceback, and --debug goes with them, or "rerun with --debug" could not be followed."""
    exe = str(Path(sys.executable).parent / "llavatune")
    args = ["train", "tiny-lora", f"model={tmp_path / 'none'}", f"out={tmp_path / 'r'}", "--procs", "2"]
    plain = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    debug = subprocess.run([exe, "--debug", *args], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    # both processes fail the same way: torchrun names the one that stopped first
    assert "no such file or folder" in plain.stderr and "OMP_NUM_THREADS" not in plain.stderr  # no torchrun banner
    assert re.search(r"error: process [01] of the run stopped \(exit code 2\); its message is above", plain.stderr)
    assert "failed (exitcode" not in plain.stderr and "failed (exitcode" in debug.stderr  # torchrun's log line
    assert debug.returncode != 0 and "in main" in debug.stderr and "llavatune/train" in debug.stderr


def test_a_dry_run_for_several_devices_plans_them_all_in_this_process(tmp_path, capsys, monkeypatch):
    """Planning a 4-GPU run on a laptop: no processes (each printed its own plan), the global batch counts them."""
    import subprocess as sp

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sp, "run", lambda *a, **k: pytest.fail("a dry run started processes"))
    with pytest.raises(SystemExit) as exit_info:
        run(["train", "tiny-lora", "batch_size=4", "grad_accum=2", "--dry-run", "--procs", "4"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.count("│ steps") == 1  # one plan
    out = " ".join(out.replace("│", " ").split())  # the table's wrapped cells as one text
    assert "of 32 samples (4 per device x 4 device(s) x 2 accumulation)" in out


def test_a_taken_port_is_one_line(tmp_path):
    """Another run (or anything) listening on --master-port: torchrun's 30-line traceback becomes the fix."""
    import socket

    exe = str(Path(sys.executable).parent / "llavatune")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run([exe, "train", "tiny-lora", f"out={tmp_path / 'r'}", "--procs", "2", "--master-port",
                                 port], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: port {port} on this machine is taken (another run?): give --master-port" in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_gpus_without_a_gpu_is_an_error_not_a_cpu_run(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test: --gpus 0 sets it in this process
    with pytest.raises(SystemExit) as exit_info:
        run(["train", "tiny-lora", f"model={tiny_model_dir}", f"out={tmp_path / 'r'}", "--gpus", "0"])
    assert exit_info.value.code == 2
    assert "device=cuda, but torch sees no GPU (CUDA_VISIBLE_DEVICES='0'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_gpus_and_procs_together_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["train", "tiny-lora", f"out={tmp_path / 'r'}", "--gpus", "0,1", "--procs", "2"])
    assert exit_info.value.code == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_on_several_processes_runs_the_same_command_in_each(tmp_path, monkeypatch):
    """`eval --procs/--gpus` starts torchrun with the eval command as it was given (options in the order
    `eval --help` lists them, flags, key=value settings), which each process runs for its share of the questions."""
    import subprocess as sp
    import types

    started = []
    monkeypatch.setattr(sp, "run", lambda command, env: started.append((command, env)) or types.SimpleNamespace(
        returncode=0))
    argv = ["eval", str(tmp_path / "m"), "--data", "qa.json", "--out", "o", "--metrics", "vqa,em", "--prompt-suffix",
            "short", "--ocr-tokens", "--gpus", "2,3", "template=vicuna_v1", "data_workers=0"]
    with pytest.raises(SystemExit) as exit_info:
        run(["--debug", *argv])
    assert exit_info.value.code in (0, None)
    (command, env), = started
    assert command[command.index("llavatune.cli") + 1:] == ["--debug", *argv]
    assert "--nproc_per_node=2" in command and env["CUDA_VISIBLE_DEVICES"] == "2,3"
