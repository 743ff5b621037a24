"""Start a local process group (one process per rank) for tests, benchmarks and single-node runs.

gloo on CPU, NCCL when every rank can have its own GPU. Each rank runs ``fn(rank, world_size, *args)``
inside an initialized group that is torn down afterwards; a failing rank fails the whole launch, and
the group's timeout bounds any collective a crashed peer would otherwise leave hanging.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BACKENDS = ("gloo", "nccl")


def default_backend(world_size: int) -> str:
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def check_backend(backend: str, world_size: int, visible_gpus: int) -> None:
    """NCCL binds rank r to ``cuda:r``: it needs a GPU per rank (two ranks on one GPU are refused by NCCL)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    if backend == "nccl" and visible_gpus < world_size:
        raise ValueError(
            f"backend='nccl' with world_size={world_size} needs {world_size} GPUs, {visible_gpus} visible; "
            "allowed: world_size <= the visible GPUs, or backend='gloo'"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str | None = None,
    timeout_s: float = 120.0,
    threads_per_rank: int = 1,
) -> None:
    """Run ``fn`` on ``world_size`` spawned ranks; ``fn`` must be importable (module level)."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} is not allowed; allowed: an integer >= 1")
    backend = backend or default_backend(world_size)
    check_backend(backend, world_size, torch.cuda.device_count())
    mp.start_processes(
        _run_rank,
        args=(fn, world_size, free_port(), backend, timeout_s, threads_per_rank, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def _run_rank(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    threads_per_rank: int,
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(threads_per_rank)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        fn(rank, world_size, *args)
        # Tear down together: a gloo rank that destroys its group while a peer is still in a collective with it
        # makes that peer abort ("terminate called without an active exception"). Only a rank that succeeded
        # waits here; a failing one goes straight to teardown, and the launcher then ends its peers (the
        # group's timeout bounds the wait in any case).
        dist.barrier()
    finally:
        dist.destroy_process_group()
