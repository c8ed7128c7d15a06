"""Distributed data parallel from torchrun's environment, and the single-process case as its trivial form.

``torchrun --nproc_per_node N -m maskdn train ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
each process then joins the group (gloo on CPU, nccl on GPU) and trains on its slice of the global
batch. Without those variables the run is one process and nothing is initialised. ``MASKDN_DIST_INIT``
may replace torchrun's ``env://`` rendezvous by another init method (e.g. ``file:///tmp/store``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..devices import resolve_device


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes and its device.

    Attributes:
        rank: The global rank, 0 to ``world_size - 1`` (torchrun's ``RANK``).
        world_size: The number of processes (``WORLD_SIZE``); 1 without torchrun.
        local_rank: The rank on this machine (``LOCAL_RANK``); picks the GPU ``cuda:<local_rank>``.
        device: The device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and saves."""
        return self.rank == 0


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_device(f"cuda:{local_rank}") if name == "cuda" else torch.device("cpu")


def setup(device: str = "auto") -> Context:
    """The :class:`Context` of this process, joining the process group when launched by torchrun.

    With ``WORLD_SIZE`` unset or <= 1 nothing is initialised. Otherwise ``RANK`` and ``LOCAL_RANK``
    (default 0) are read, a CUDA device ``cuda:<LOCAL_RANK>`` is made current, and, unless a group
    exists already, :func:`torch.distributed.init_process_group` is called with backend ``nccl``
    (CUDA) or ``gloo`` (CPU) and init method ``$MASKDN_DIST_INIT``, default ``env://`` (torchrun's
    ``MASTER_ADDR`` / ``MASTER_PORT``).

    Args:
        device: ``"auto"`` (CUDA if available, else CPU) or ``"cuda"``; any other value gives the CPU.

    Returns:
        The :class:`Context` of this process.

    Raises:
        KeyError: If ``WORLD_SIZE`` > 1 and ``RANK`` is unset.
        ValueError: If ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is not an integer, or (from
            ``init_process_group``) ``env://`` lacks ``MASTER_ADDR`` / ``MASTER_PORT``.
        RuntimeError: From ``init_process_group``, e.g. a failed rendezvous.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=_device(device, 0))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo",
            init_method=os.environ.get("MASKDN_DIST_INIT", "env://"), rank=rank, world_size=world,
        )
    return Context(rank, world, local, dev)


def teardown() -> None:
    """Leave the process group (``destroy_process_group``) if this process is in one; else do nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Context", "setup", "teardown"]
