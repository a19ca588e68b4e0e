"""Padded mini-batches with masks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from arcmil.data.bagset import BagSet


@dataclass
class Batch:
    """x: (B, N, D) float32, zero-padded; mask: (B, N) bool, True = real window;
    y: (B,) float32 labels or None; index: (B,) positions of the bags in their BagSet."""

    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.x.to(device), self.mask.to(device),
                     None if self.y is None else self.y.to(device), self.index)


def collate(bs: BagSet, index: list[int]) -> Batch:
    lengths = [len(bs.bags[i]) for i in index]
    x = torch.zeros(len(index), max(lengths), bs.dim)
    mask = torch.zeros(len(index), max(lengths), dtype=torch.bool)
    for row, (i, n) in enumerate(zip(index, lengths)):
        x[row, :n] = torch.from_numpy(bs.bags[i])
        mask[row, :n] = True
    y = None if bs.labels is None else torch.as_tensor(bs.labels[index], dtype=torch.float32)
    return Batch(x, mask, y, torch.as_tensor(index))


def make_loader(bs: BagSet, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Batches of bag positions collated into padded ``Batch``es; shuffling uses its own seeded
    generator so the order does not depend on global RNG state."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(np.arange(len(bs)).tolist(), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, collate_fn=lambda index: collate(bs, index))
