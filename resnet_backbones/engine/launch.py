"""Starting one or many training processes: Detectron2's ``launch``, ``torchrun``, and CPU gloo.

Detectron2's ``launch`` spawns one process per GPU. It cannot run several processes on a CPU
machine (v0.6 asserts CUDA), and its ``create_ddp_model`` passes ``device_ids`` that a CPU model
refuses. :func:`launch` keeps Detectron2's arguments and behaviour on GPUs and adds:

* ``torchrun`` (any number of machines): the process group is read from the environment that
  ``torchrun`` sets, and :func:`launch` runs the function once in the current process;
* CPU machines: ``num_gpus_per_machine`` processes with the gloo backend, so the distributed
  code path is exercised where there is no GPU (tests, laptops).
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = timedelta(minutes=30)


def started_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def restarted_by_torchrun() -> bool:
    """Whether ``torchrun --max-restarts N`` has restarted the workers after one of them died;
    the restarted run must continue from its last checkpoint, not start over."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def init_process_group_from_torchrun(backend: str, timeout: timedelta = DEFAULT_TIMEOUT, **kwargs) -> None:
    """``init_process_group`` from ``torchrun``'s environment (``env://``).

    After an elastic restart the workers meet again in the store of the agent, which outlives the
    killed ones and still holds their addresses; a restarted worker reading one of those before
    its peer overwrote it failed to connect (gloo: connection refused). Each restart gets keys of
    its own.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if not attempt:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout, **kwargs)
        return
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"restart_{attempt}", store), rank=rank,
                            world_size=world_size, timeout=timeout, **kwargs)


def _create_local_process_group(num_per_machine: int) -> None:
    """The per-machine group ``comm.get_local_rank()`` relies on (only Detectron2's launch sets it)."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 main
        comm.create_local_process_group(num_per_machine)
        return
    # v0.6 keeps the group in a module global; every rank must create every group, in order
    num_machines = dist.get_world_size() // num_per_machine
    machine = dist.get_rank() // num_per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine:
            comm._LOCAL_PROCESS_GROUP = group


def _init_process_group(backend: str, init_method: str, world_size: int, rank: int, num_per_machine: int,
                        local_rank: int) -> None:
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if init_method == "env://":
        init_process_group_from_torchrun(backend)
    else:
        dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size, rank=rank,
                                timeout=DEFAULT_TIMEOUT)
    _create_local_process_group(num_per_machine)
    comm.synchronize()


def _cpu_worker(local_rank: int, main_func: Callable, world_size: int, num_per_machine: int, machine_rank: int,
                dist_url: str, args: Sequence[Any]) -> None:
    rank = machine_rank * num_per_machine + local_rank
    _init_process_group("gloo", dist_url, world_size, rank, num_per_machine, local_rank)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(main_func: Callable, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args: Sequence[Any] = ()) -> Any:
    """Run ``main_func(*args)`` in every process of the job, as Detectron2's ``launch``.

    Under ``torchrun`` the process group comes from the environment and the other arguments
    are ignored. Without CUDA, ``num_gpus_per_machine`` is the number of CPU processes.
    """
    if started_by_torchrun():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local_rank = int(os.environ["LOCAL_RANK"])
        _init_process_group(backend, "env://", int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]),
                            int(os.environ["LOCAL_WORLD_SIZE"]), local_rank)
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()

    world_size = num_gpus_per_machine * num_machines
    if world_size <= 1:
        return main_func(*args)
    if torch.cuda.is_available():
        from detectron2.engine import launch as detectron2_launch

        return detectron2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args)

    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url=auto only works on one machine; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info("No CUDA: running %d processes per machine with the gloo backend", num_gpus_per_machine)
    mp.start_processes(_cpu_worker, nprocs=num_gpus_per_machine, start_method="spawn", daemon=False,
                       args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args)))
    return None


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wrap_distributed(model: torch.nn.Module, **ddp_kwargs) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when there are several processes.

    Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]``, which DDP rejects for
    a CPU model; here device ids are given only for a CUDA model.
    """
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **ddp_kwargs)
