"""Long-format tables (.csv / .parquet): one row per window embedding.

Columns: ``bag_id``, ``label``, optional ``split``, optional ``window`` (rows sharing bag_id and
window are averaged into one instance; windows are ordered by this column), optional
``instance_label``, and the embedding as ``emb_0 … emb_{D-1}``. Without ``window`` the rows of a
bag are its windows in file order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arcmil.data.bagset import BagSet
from arcmil.errors import DataError


def read_table(path: Path) -> BagSet:
    src = str(path)
    try:
        if path.suffix.lower() == ".parquet":
            try:
                df = pd.read_parquet(path)
            except ImportError:
                raise DataError(src, "reading parquet needs pyarrow: pip install 'arcmil[parquet]'") from None
        else:
            df = pd.read_csv(path, dtype={"bag_id": str, "split": str})
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise DataError(src, f"not a readable table ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return table_to_bagset(df, src)


def _emb_columns(df: pd.DataFrame, src: str) -> list[str]:
    cols = [c for c in df.columns if isinstance(c, str) and c.startswith("emb_")]
    if not cols:
        raise DataError(src, "no embedding columns emb_0 … emb_{D-1}", field="emb_*")
    try:
        index = sorted(int(c[4:]) for c in cols)
    except ValueError:
        raise DataError(src, f"embedding columns must be named emb_<int>, found {cols[:3]}", field="emb_*") from None
    missing = sorted(set(range(index[-1] + 1)) - set(index))
    if missing:
        raise DataError(src, f"embedding column emb_{missing[0]} is missing", field=f"emb_{missing[0]}")
    for c in cols:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise DataError(src, f"expected numbers, found dtype {df[c].dtype}", field=c)
    return [f"emb_{i}" for i in index]


def table_to_bagset(df: pd.DataFrame, src: str) -> BagSet:
    if "bag_id" not in df.columns:
        raise DataError(src, "missing required column", field="bag_id")
    if len(df) == 0:
        raise DataError(src, "no rows", field="bag_id")
    emb_cols = _emb_columns(df, src)
    df = df.assign(bag_id=df["bag_id"].astype(str))
    has_labels = "label" in df.columns
    if has_labels and not pd.api.types.is_numeric_dtype(df["label"]):
        bad = df.loc[pd.to_numeric(df["label"], errors="coerce").isna()].iloc[0]
        raise DataError(src, f"label {bad['label']!r} is not 0 or 1", bag=bad["bag_id"], field="label")

    bags, labels, ids, splits, inst = [], [], [], [], []
    for bag_id, rows in df.groupby("bag_id", sort=False):
        if has_labels:
            values = rows["label"].unique()
            if len(values) != 1:
                raise DataError(src, f"rows disagree on the label ({sorted(values.tolist())})", bag=bag_id,
                                field="label")
            labels.append(values[0])
        if "split" in df.columns:
            values = rows["split"].astype(str).str.strip().str.lower().unique()
            if len(values) != 1:
                raise DataError(src, f"rows disagree on the split ({sorted(values.tolist())})", bag=bag_id,
                                field="split")
            splits.append(values[0])
        if "window" in df.columns:
            # rows sharing a window are K embeddings of one instance: average them
            grouped = rows.groupby("window", sort=True)
            emb = grouped[emb_cols].mean().to_numpy(np.float32)
            if "instance_label" in df.columns:
                inst.append(grouped["instance_label"].max().to_numpy())
        else:
            emb = rows[emb_cols].to_numpy(np.float32)
            if "instance_label" in df.columns:
                inst.append(rows["instance_label"].to_numpy())
        bags.append(emb)
        ids.append(bag_id)
    return BagSet(
        bags=bags,
        labels=np.asarray(labels) if has_labels else None,
        bag_ids=np.asarray(ids, dtype=str),
        split=np.asarray(splits, dtype=str) if splits else None,
        instance_labels=inst or None,
        source=src,
    )
