"""`llavatune train --gpus/--procs/--nodes`: torchrun running `llavatune train ...` once per process.

`python -m llavatune.training.launch` is torchrun (torch.distributed.run) with one change: when a process
fails, it has already printed its own one-line error (its traceback with --debug), and torchrun's
ChildFailedError traceback on top of that is 30 lines that hide it. That one becomes a line too, the exit
code is the failed process's, and torchrun's log lines about stopping the other processes are left out
(they come back with --debug).
"""

from __future__ import annotations

import logging
import os
import sys


def command(argv: list[str], procs: int, nodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
            master_port: int | None = None) -> list[str]:
    """The launch of `llavatune ARGV` in `procs` processes per machine (one per GPU, or CPU processes).
    Without a port, one machine takes any free one, so that two runs on one machine (each on its own GPUs) do
    not collide; machines of a multi-node run must agree on one, torchrun's 29500."""
    if master_port is None:
        master_port = free_port() if nodes == 1 else 29500
    return [sys.executable, "-m", "llavatune.training.launch", f"--nproc_per_node={procs}", f"--nnodes={nodes}",
            f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}",
            "-m", "llavatune.cli", *argv]


def free_port() -> int:
    """A port nothing listens on now (the system picks it); torchrun binds it a moment later."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(procs: int, gpus: str | None = None) -> dict[str, str]:
    """This process's environment for the launch, with the chosen GPUs and each process's CPU threads: torchrun
    would set OMP_NUM_THREADS=1 under a banner, which starves CPU processes and ZeRO-offload's CPU optimizer on
    a machine with cores to spare. The cores are shared out instead; a value the user set is kept."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus} if gpus else {})}
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // procs)))
    return env


def main(argv: list[str]) -> int:
    from torch.distributed import DistNetworkError
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    if "--debug" not in argv:  # "Sending process N closing signal SIGTERM", "failed (exitcode: 2) ...": said below
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(args)
    except DistNetworkError as err:
        if "--debug" in argv or "EADDRINUSE" not in str(err):
            raise
        print(f"error: port {args.master_port} on this machine is taken (another run?): give --master-port with a "
              "free one, the same on every machine", file=sys.stderr)
        return 2
    except ChildFailedError as err:
        if "--debug" in argv:
            raise
        rank, failure = err.get_first_failure()
        print(f"error: {_why(rank, failure.exitcode)}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _why(rank: int, code: int) -> str:
    """A process that exits has printed why; one killed by a signal (negative code) could not."""
    if code >= 0:
        return f"process {rank} of the run stopped (exit code {code}); its message is above."
    import signal

    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    oom = ": most often the machine ran out of memory (see dmesg)" if -code == signal.SIGKILL else ""
    return f"process {rank} of the run was killed by signal {name}{oom}."


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
