"""Bags stored back to back in one (W, D) window array, in memory or memory-mapped from a store."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PackedBags(Sequence):
    """A sequence of bags that are row ranges of one window array.

    windows: (W, D) float32 or float16 array (an ``np.memmap`` for an on-disk store);
    offsets, lengths: (B,) int64, bag i is ``windows[offsets[i] : offsets[i] + lengths[i]]``.
    ``bags[i]`` is a float32 (n_i, D) array; ``subset`` shares the window array, so selecting a split
    never copies windows.
    """

    def __init__(self, windows: np.ndarray, offsets: np.ndarray, lengths: np.ndarray):
        self.windows = windows
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)

    @classmethod
    def from_list(cls, bags: Sequence[np.ndarray]) -> "PackedBags":
        if isinstance(bags, PackedBags):
            return bags
        lengths = np.array([len(b) for b in bags], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(np.concatenate(bags).astype(np.float32, copy=False), offsets, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = self.offsets[i]
        return np.asarray(self.windows[start:start + self.lengths[i]], dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.windows.shape[1])

    def subset(self, index: np.ndarray) -> "PackedBags":
        return PackedBags(self.windows, self.offsets[index], self.lengths[index])

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Window-array row numbers of the bags ``index``, bag after bag: (sum of their lengths,)."""
        lengths = self.lengths[index]
        starts = np.repeat(self.offsets[index] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return starts + np.arange(lengths.sum())

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The windows of the bags ``index`` stacked: (sum of their lengths, D) float32. On a memmap
        only these rows are read."""
        rows = self.rows(index)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # one contiguous range: a plain slice
            return np.asarray(self.windows[rows[0]:rows[-1] + 1], dtype=np.float32)
        return np.asarray(self.windows[rows], dtype=np.float32)
