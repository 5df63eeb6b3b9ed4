"""Every command in README.md and docs/*.md runs, in order, per document, in a scratch folder.

Hub ids cannot be downloaded here, so each is swapped for a tiny local stand-in of the same family. The demo
runs once per session, as the README's `make demo` (the demo_run fixture); a document that runs it gets a copy."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llavatune.cli import run

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STAND_INS = {  # hub id -> tiny folder name in the tiny_parts_dir fixture
    "Qwen/Qwen1.5-4B-Chat": "llm-qwen2",
    "lmsys/vicuna-7b-v1.5": "llm-llama",
    "openai/clip-vit-large-patch14-336": "vision-clip-dual",
    "internlm/internlm2-chat-1_8b": "llm-internlm2",
}

BENCH_ON_CPU = [  # GPU benchmark commands run on the tiny shape; 4-bit needs CUDA, so qlora runs as lora
    (r"--shape \S+", "--shape tiny"), (r"--method qlora", "--method lora"), (r"--steps \d+", "--steps 2"),
    (r"--new-tokens \d+", "--new-tokens 4"), (r"batches=\[[\d,]+\]", "batches=[1,2]")]


def python_blocks(doc: Path) -> list[str]:
    """```python blocks, run after the document's commands; ```python no-run marks one that needs a live
    server (the openai client: tests/test_serve.py makes the same calls)."""
    return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)


def commands(doc: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
    lines = [line.split("  # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(("llavatune ", "make ", "echo "))]


def stand_in_files(folder: Path, parts: Path) -> None:
    """Small files under the names the docs use for real datasets and checkpoints."""
    import torch
    from test_convert import projector_weights, write_lora_run, write_original

    write_original(folder / "llava-v1.5-7b", parts, "mlp2x_gelu", "pad")
    write_lora_run(folder / "llava-v1.5-7b-lora", parts)
    torch.save(projector_weights("mlp2x_gelu"), folder / "mm_projector.bin")
    g = torch.Generator().manual_seed(0)
    xtuner = {k.replace("model.mm_projector.", "projector.model."): v for k, v in projector_weights("mlp2x_gelu").items()}
    xtuner["llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.randn(4, 64, generator=g)
    xtuner["llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = torch.zeros(64, 4)
    torch.save({"state_dict": xtuner}, folder / "iter_5000.pth")
    on_internlm2 = {k: v for k, v in xtuner.items() if k.startswith("projector.")}  # LoRA on the packed wqkv
    on_internlm2["llm.base_model.model.model.layers.0.attention.wqkv.lora_A.default.weight"] = torch.randn(4, 64, generator=g)
    on_internlm2["llm.base_model.model.model.layers.0.attention.wqkv.lora_B.default.weight"] = torch.randn(128, 4, generator=g)
    (folder / "work_dirs/llava_internlm2_chat_1_8b_qlora").mkdir(parents=True)
    torch.save({"state_dict": on_internlm2}, folder / "work_dirs/llava_internlm2_chat_1_8b_qlora/iter_2181.pth")
    rows = [{"id": str(i), "image": f"{'textvqa/train_images' if i % 3 else 'coco/train2017'}/{i}.jpg",
             "conversations": [{"from": "human", "value": "<image>\nWhat does it say?"},
                               {"from": "gpt", "value": f"word{i}"}]} for i in range(3000)]
    (folder / "llava_v1_5_mix665k.json").write_text(json.dumps(rows))


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_doc_commands_run(doc, tiny_parts_dir, demo_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stand_in_files(tmp_path, tiny_parts_dir)
    cmds = commands(doc)
    assert cmds or doc.name != "README.md"
    for cmd in cmds:
        for hub_id, folder in STAND_INS.items():
            cmd = cmd.replace(hub_id, str(tiny_parts_dir / folder))
        if cmd.startswith("llavatune bench "):
            for pattern, stand_in in BENCH_ON_CPU:
                cmd = re.sub(pattern, stand_in, cmd)
        argv = shlex.split(cmd)
        if argv[:2] in (["llavatune", "demo"], ["make", "demo"]):  # run once per session by demo_run: copy it
            import shutil
            shutil.copytree(demo_run[0], argv[argv.index("--out") + 1] if "--out" in argv else "runs/demo")
        elif argv[0] == "make":  # `make test` is the suite itself: running it from inside would recurse
            assert argv == ["make", "test"], f"{doc.name}: no test runs `{cmd}`"
        elif argv[:2] == ["llavatune", "serve"]:
            run_server(argv, doc)
        elif "|" in cmd:  # a pipeline: through the shell, with the installed console script
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
            result = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env)
            assert result.returncode == 0, f"{doc.name}: `{cmd}` failed: {result.stderr[-1500:]}"
        else:
            with pytest.raises(SystemExit) as exit_info:
                run(argv[1:])
            assert exit_info.value.code in (0, None), f"{doc.name}: `{cmd}` failed"
    for k, code in enumerate(python_blocks(doc)):
        exec(compile(code, f"{doc.name} python block {k + 1}", "exec"), {"__name__": "__doc_example__"})


def run_server(argv: list[str], doc: Path) -> None:
    """A server runs until stopped: start it on a free port, wait for /health, stop it."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).parent / "llavatune")
    proc = subprocess.Popen([exe, *argv[1:], "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    return
            except OSError:
                assert proc.poll() is None, f"{doc.name}: `{' '.join(argv)}` exited: {proc.stderr.read()[-1500:]}"
                time.sleep(0.25)
        raise AssertionError(f"{doc.name}: `{' '.join(argv)}` did not answer /health within a minute")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
