"""Write a BagSet in any supported format (used by ``arcmil demo-data`` and by tests)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from arcmil.data.bagset import BagSet
from arcmil.errors import ArcmilError


def save_bags(bs: BagSet, path: str | os.PathLike) -> Path:
    """Write ``bs`` to .npz / .pt (flat windows + lengths) or .csv / .parquet (one row per window)."""
    path = Path(path)
    suffix = path.suffix.lower()
    arrays = {
        "embeddings": np.concatenate(bs.bags).astype(np.float32),
        "lengths": bs.lengths,
        "bag_ids": bs.bag_ids.astype(str),
    }
    if bs.labels is not None:
        arrays.update(bs.label_space.arrays(bs.labels))
    if bs.split is not None:
        arrays["split"] = bs.split.astype(str)
    if bs.instance_labels is not None:
        arrays["instance_labels"] = np.concatenate(bs.instance_labels)
    if suffix == ".npz":
        np.savez_compressed(path, **arrays)
    elif suffix in (".pt", ".pth"):
        import torch

        tensors = {k: torch.from_numpy(v) for k, v in arrays.items() if v.dtype.kind != "U"}
        tensors.update({k: v.tolist() for k, v in arrays.items() if v.dtype.kind == "U"})
        torch.save(tensors, path)
    elif suffix in (".csv", ".parquet"):
        df = bags_to_table(bs)
        df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path, index=False)
    else:
        raise ArcmilError(f"{path}: unsupported suffix {suffix!r}")
    return path


def bags_to_table(bs: BagSet) -> pd.DataFrame:
    lengths = bs.lengths
    columns = {
        "bag_id": np.repeat(bs.bag_ids.astype(str), lengths),
        "window": np.concatenate([np.arange(n) for n in lengths]),
    }
    if bs.labels is not None:
        labels = bs.label_space.table_columns(bs.labels)
        columns.update({name: np.repeat(values, lengths) for name, values in labels.items()})
    if bs.split is not None:
        columns["split"] = np.repeat(bs.split.astype(str), lengths)
    if bs.instance_labels is not None:
        columns["instance_label"] = np.concatenate(bs.instance_labels)
    emb = np.concatenate(bs.bags)
    columns.update({f"emb_{j}": emb[:, j] for j in range(emb.shape[1])})
    return pd.DataFrame(columns)
