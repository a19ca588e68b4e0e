"""Bags stored back to back in one (W, D) window array, in memory or in an on-disk store's file."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


class WindowFile:
    """A (W, D) array in a raw binary file, read by row ranges with ``os.pread``.

    Unlike a memory map, the rows read do not stay mapped in the process (they are counted in the
    page cache, not in its resident memory), so scanning a store larger than RAM keeps RSS bounded.
    """

    def __init__(self, path: str | os.PathLike, dtype: str, shape: tuple[int, int]):
        self.path, self.dtype, self.shape = str(path), np.dtype(dtype), tuple(shape)
        self._row_bytes = self.dtype.itemsize * self.shape[1]
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        data = os.pread(self._fd, max(stop - start, 0) * self._row_bytes, start * self._row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, self.shape[1])

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def bag_starts(lengths: np.ndarray) -> np.ndarray:
    """(B,) int64: where each bag starts when bags of ``lengths`` lie back to back from row 0."""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def bag_chunks(lengths: np.ndarray, max_windows: int):
    """Consecutive runs of whole bags holding about ``max_windows`` windows each (at least one bag):
    yields the bag positions of each run."""
    ends = np.cumsum(lengths)
    start = 0
    while start < len(lengths):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - lengths[start] + max_windows, "right")))
        yield np.arange(start, stop)
        start = stop


class PackedBags(Sequence):
    """A sequence of bags that are row ranges of one window array.

    windows: (W, D) float32 or float16 array, or a ``WindowFile`` for an on-disk store;
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
        offsets = bag_starts(lengths)
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

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The windows of the bags ``index`` stacked, bag after bag: (sum of their lengths, D) float32.
        Bags adjacent in the window array are read as one range; from a store only these rows are read."""
        starts = self.offsets[index]
        stops = starts + self.lengths[index]
        breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1  # where the next bag does not follow on
        first, last = np.split(starts, breaks), np.split(stops, breaks)
        parts = [self.windows[a[0]:b[-1]] for a, b in zip(first, last)]
        # always a fresh, writable array: batches never alias the dataset
        return np.array(parts[0], dtype=np.float32) if len(parts) == 1 else np.concatenate(parts, dtype=np.float32)
