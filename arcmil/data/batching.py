"""Padded mini-batches with masks, built by vectorised gathers from packed bags (no per-bag collation)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from arcmil.data.bagset import BagSet
from arcmil.data.packed import PackedBags, WindowFile, bag_chunks, bag_starts
from arcmil.distributed import SINGLE, World

BUCKET_BATCHES = 50  # length bucketing in training sorts the bags of this many batches at a time
SCORING_TOKENS = 2**15  # at most this many padded windows (bags x longest) per scoring batch
FREE_PADDING = 1024  # below this many padded windows a batch is cheap whatever its padding
PADDING_RATIO = 1.5  # above it, padded windows may exceed the real ones by at most this factor
RESIDENT_SHARE = 0.25  # train + validation windows stay on a GPU when they take at most this share of its free memory
RESIDENT_CHUNK = 2**16  # windows normalised and copied to the device at a time


@dataclass
class Batch:
    """x: (B, N, D) float32, zero-padded; mask: (B, N) bool, True = real window;
    y: (B,) float32 labels or None; index: (B,) positions of the bags in their BagSet.
    loss_scale: this batch's share of the global batch times the number of ranks (1.0 in one process;
    0.0 for a stand-in batch of a rank that got no bags), so that DDP's gradient average equals the
    gradient of the global batch's mean loss."""

    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor
    loss_scale: float = 1.0

    def to(self, device) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        return Batch(self.x.to(device, non_blocking=non_blocking), self.mask.to(device, non_blocking=non_blocking),
                     None if self.y is None else self.y.to(device, non_blocking=non_blocking), self.index,
                     self.loss_scale)


def collate(bs: BagSet, index, normalizer=None, loss_scale: float = 1.0) -> Batch:
    """The bags ``index`` of ``bs`` as one padded Batch, each window normalised by ``normalizer``."""
    bags = PackedBags.from_list(bs.bags)
    index = np.asarray(index, dtype=np.int64)
    lengths = torch.from_numpy(bags.lengths[index])
    windows = torch.from_numpy(bags.gather(index))  # (sum of lengths, D)
    if normalizer is not None:
        windows = normalizer.apply(windows)
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (B, N)
    if bool(mask.all()):  # equal lengths: a reshape, no padding
        x = windows.view(len(index), -1, windows.shape[1])
    else:
        x = windows.new_zeros(*mask.shape, windows.shape[1])
        x[mask] = windows  # row-major order of mask matches the bag-after-bag order of windows
    y = None if bs.labels is None else torch.as_tensor(bs.labels[index], dtype=torch.float32)
    return Batch(x, mask, y, torch.from_numpy(index), loss_scale)


def padded_slots(starts: np.ndarray, lengths: np.ndarray, fill: int) -> np.ndarray:
    """For bags whose windows are rows ``starts[i] : starts[i] + lengths[i]``: the (B, N) row number of
    each padded slot, ``fill`` on padding, N the longest length."""
    columns = np.arange(int(lengths.max()))
    return np.where(columns[None, :] < lengths[:, None], starts[:, None] + columns[None, :], fill)


class ResidentBags:
    """A split's windows, normalised, held on ``device`` with one zero row after them: a batch is one
    gather there (``index_select`` of its padded slots, padding reading the zero row), so windows cross
    from the host once, not every epoch, and no step waits on a mask-driven scatter. The host computes
    only the bag positions and (B, N) slot numbers and sends them in one copy; the mask is derived on
    the device. Batches equal ``collate``'s (tested)."""

    def __init__(self, bs: BagSet, normalizer, device):
        bags = bs.bags
        self.device, self.lengths, self.starts = torch.device(device), bags.lengths, bag_starts(bags.lengths)
        self.padding_row = int(self.lengths.sum())
        self.windows = torch.zeros(self.padding_row + 1, bags.dim, device=self.device)
        for chunk in bag_chunks(self.lengths, RESIDENT_CHUNK):
            windows = torch.from_numpy(bags.gather(chunk))
            if normalizer is not None:
                windows = normalizer.apply(windows)
            start = int(self.starts[chunk[0]])
            self.windows[start:start + len(windows)] = windows.to(self.device)
        self.labels = None if bs.labels is None else torch.as_tensor(bs.labels, dtype=torch.float32,
                                                                      device=self.device)

    @staticmethod
    def fits(parts: list[BagSet], device) -> bool:
        """Whether ``parts`` may be held on ``device`` together: a CUDA device, windows in memory (not a
        store) taking at most RESIDENT_SHARE of its free memory (memory cached by torch but unused counts
        as free)."""
        device = torch.device(device)
        if device.type != "cuda" or any(isinstance(getattr(bs.bags, "windows", None), WindowFile) for bs in parts):
            return False
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return sum(4 * bs.dim * (int(bs.lengths.sum()) + 1) for bs in parts) <= RESIDENT_SHARE * free

    def collate(self, index: np.ndarray, loss_scale: float = 1.0) -> Batch:
        index = np.asarray(index, dtype=np.int64)
        slots = padded_slots(self.starts[index], self.lengths[index], self.padding_row)
        sent = torch.from_numpy(np.concatenate([index, slots.reshape(-1)]))
        sent = sent.to(self.device, non_blocking=self.device.type == "cuda")  # the batch's one copy
        rows = sent[len(index):]
        x = self.windows.index_select(0, rows).view(*slots.shape, self.windows.shape[1])
        y = None if self.labels is None else self.labels.index_select(0, sent[:len(index)])
        return Batch(x, rows.view(slots.shape) != self.padding_row, y, torch.from_numpy(index), loss_scale)


def length_batches(lengths: np.ndarray, batch_size: int, max_tokens: int = SCORING_TOKENS) -> list[np.ndarray]:
    """Scoring batches: bag positions sorted by length (stable), cut into runs of at most
    ``batch_size`` bags whose padded size (bags x longest) stays within ``max_tokens`` and, past
    ``FREE_PADDING``, within ``PADDING_RATIO`` x their real windows: a batch costs about what its
    real windows cost, and a long bag goes alone."""
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order].astype(np.int64)
    cumulative = np.concatenate([[0], np.cumsum(sorted_lengths)])
    out, start = [], 0
    while start < len(order):
        stops = np.arange(start + 1, min(start + batch_size, len(order)) + 1)
        padded = (stops - start) * sorted_lengths[stops - 1]  # ascending lengths: the last bag is the longest
        real = cumulative[stops] - cumulative[start]
        fits = (padded <= max_tokens) & ((padded <= FREE_PADDING) | (padded <= PADDING_RATIO * real))
        fits[0] = True  # one bag always fits
        stop = int(stops[-1]) if fits.all() else int(stops[np.argmin(fits) - 1])
        out.append(order[start:stop])
        start = stop
    return out


class BagLoader:
    """Iterates padded ``Batch``es of a BagSet.

    shuffle: a new permutation each epoch from the loader's own generator seeded with ``seed``,
    independent of global RNG state (so dropout draws do not change the batch order).
    bucket: batches of bags of similar length (less padding for long, uneven bags).
    Training (``shuffle``): every ``BUCKET_BATCHES`` batches' worth of bags is sorted by length, cut
    into batches, and the batches are shuffled (bags of equal length, or batches of one bag, get
    plain shuffled batches: there is no padding to save).
    Scoring: all bags sorted by length and cut under a token budget (``length_batches``); outputs
    are placed by bag position, so their order is kept.
    world: under DDP every rank walks the same global batches and collates only its shard of each;
    with ``shuffle`` (training) a rank whose shard is empty gets a stand-in batch with loss_scale 0,
    because every rank must take part in every gradient all-reduce.
    """

    def __init__(self, bs: BagSet, batch_size: int, *, shuffle: bool = False, seed: int = 0, normalizer=None,
                 bucket: bool = False, world: World = SINGLE, resident_on=None):
        self.bs = bs if isinstance(bs.bags, PackedBags) else bs.with_bags(PackedBags.from_list(bs.bags))
        self.batch_size, self.shuffle, self.bucket, self.normalizer = batch_size, shuffle, bucket, normalizer
        self.world = world
        self.generator = torch.Generator().manual_seed(seed)
        # resident_on: a device to hold the bags on (ResidentBags), built at the first batch
        self.resident_on, self._resident = resident_on, None

    def __len__(self) -> int:
        return -(-len(self.bs) // self.batch_size)

    def batches(self) -> list[np.ndarray]:
        """The bag positions of each batch of the next epoch (advances the shuffling generator)."""
        n = len(self.bs)
        order = torch.randperm(n, generator=self.generator).numpy() if self.shuffle else np.arange(n)
        if self.bucket and not self.shuffle:
            return length_batches(self.bs.lengths, self.batch_size)
        if not self.bucket or self.batch_size == 1 or n == 0 or np.ptp(self.bs.lengths) == 0:  # nothing to bucket
            return [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]
        lengths, span, out = self.bs.lengths, self.batch_size * BUCKET_BATCHES, []
        for s in range(0, n, span):
            block = order[s:s + span]
            block = block[np.argsort(lengths[block], kind="stable")]
            out += [block[b:b + self.batch_size] for b in range(0, len(block), self.batch_size)]
        return [out[i] for i in torch.randperm(len(out), generator=self.generator).tolist()]

    def _collate(self, index: np.ndarray, loss_scale: float) -> Batch:
        if self.resident_on is None:
            return collate(self.bs, index, self.normalizer, loss_scale)
        if self._resident is None:
            self._resident = ResidentBags(self.bs, self.normalizer, self.resident_on)
        return self._resident.collate(index, loss_scale)

    def __iter__(self):
        for index in self.batches():
            local = self.world.shard(index)
            if len(local):
                yield self._collate(local, len(local) * self.world.size / len(index))
            elif self.shuffle:
                yield self._collate(index[:1], 0.0)


make_loader = BagLoader


def scoring_loader(bs: BagSet, batch_size: int, normalizer=None, world: World = SINGLE,
                   resident_on=None) -> BagLoader:
    """How every bag is scored (validation, test, predict, the Python API): in order of length under
    a token budget, so one long bag never makes its batch-mates cost what it costs."""
    return BagLoader(bs, batch_size, normalizer=normalizer, bucket=True, world=world, resident_on=resident_on)
