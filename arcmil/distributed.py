"""Data-parallel runs under ``torchrun``: process group, shards of each global batch, gathering.

Every rank walks the same global batches (same seed); each computes its share of a batch and DDP
averages the gradients, scaled so that a step equals one process's step on the whole global batch.
Scores are gathered to every rank before any metric or threshold is computed; only rank 0 writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from arcmil.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started: its rank and how many there are."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of a global batch (empty when the batch has fewer bags than ranks)."""
        return np.array_split(index, self.size)[self.rank] if self.active else index

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


SINGLE = World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); one process otherwise."""
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def select_device(name: str = "auto") -> torch.device:
    """'auto': this process's GPU (LOCAL_RANK under torchrun) when CUDA is available, else the CPU;
    a CUDA device asked for where there is none is a ConfigError."""
    if name == "auto":
        cuda = torch.cuda.is_available()
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
