"""The launcher's last line when a process fails (the end-to-end case is in tests/test_cli.py)."""

from __future__ import annotations

import os
import signal

from llavatune.training.launch import _why, command, environment


def test_a_killed_process_is_named_with_its_signal():
    assert _why(0, 2) == "process 0 of the run stopped (exit code 2); its message is above."
    assert _why(1, -signal.SIGKILL).startswith("process 1 of the run was killed by signal SIGKILL: most often")
    assert _why(1, -signal.SIGSEGV) == "process 1 of the run was killed by signal SIGSEGV."


def test_command_runs_llavatune_once_per_process():
    argv = command(["train", "tiny-lora"], procs=2, nodes=2, node_rank=1, master_addr="10.0.0.1")
    assert argv[1:3] == ["-m", "llavatune.training.launch"]
    assert {"--nproc_per_node=2", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1"} <= set(argv)
    assert argv[-4:] == ["-m", "llavatune.cli", "train", "tiny-lora"]


def test_one_machine_takes_a_free_port_and_machines_agree_on_one():
    """Two runs on one machine (each on its own GPUs) must not both ask for torchrun's 29500; machines of a
    multi-node run cannot pick each their own."""
    port = int(next(a for a in command(["train"], procs=2) if a.startswith("--master_port=")).split("=")[1])
    assert port != 29500 and 1024 < port < 65536
    assert "--master_port=29500" in command(["train"], procs=2, nodes=2)
    assert "--master_port=1234" in command(["train"], procs=2, master_port=1234)


def test_each_process_gets_its_share_of_the_cores(monkeypatch):
    """Instead of torchrun's OMP_NUM_THREADS=1 (and its banner); what the user set stays."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))  # a machine with 16 cores
    env = environment(4, gpus="1,3,5,7")
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1,3,5,7"
    assert environment(32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert environment(2)["OMP_NUM_THREADS"] == "6"
