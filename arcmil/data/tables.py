"""Long-format tables (.csv / .parquet): one row per window embedding.

Columns: ``bag_id``, ``label`` (0/1, a class id or name, or label names joined by ``|``) or one 0/1
column ``label_<name>`` per label (multi-label), optional ``split``, optional ``window`` (rows sharing bag_id and
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

# read as text: ids and splits are names; labels become numbers only where every cell is one (labels.infer)
CSV_TEXT_COLUMNS = {"bag_id": str, "split": str, "label": str}


def read_table(path: Path) -> BagSet:
    src = str(path)
    try:
        if path.suffix.lower() == ".parquet":
            try:
                df = pd.read_parquet(path)
            except ImportError:
                raise DataError(src, "reading parquet needs pyarrow: pip install 'arcmil[parquet]'") from None
        else:
            df = pd.read_csv(path, dtype=CSV_TEXT_COLUMNS)
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
    label_cols = _label_columns(df, src)
    has_labels = bool(label_cols)

    bags, labels, ids, splits, inst = [], [], [], [], []
    for bag_id, rows in df.groupby("bag_id", sort=False):
        if has_labels:
            values = rows[label_cols].drop_duplicates()
            if len(values) != 1:
                raise DataError(src, f"rows disagree on the label ({values.to_numpy().tolist()})", bag=bag_id,
                                field=label_cols[0] if len(label_cols) == 1 else "label_*")
            labels.append(values.to_numpy()[0])
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
    multilabel = label_cols != ["label"]
    labels = np.asarray(labels) if has_labels else None
    if has_labels and not multilabel:
        labels = labels[:, 0]
    return BagSet(
        bags=bags,
        labels=labels,
        bag_ids=np.asarray(ids, dtype=str),
        split=np.asarray(splits, dtype=str) if splits else None,
        instance_labels=inst or None,
        source=src,
        meta={"label_names": [c.removeprefix("label_") for c in label_cols]} if has_labels and multilabel else {},
    )


def _label_columns(df: pd.DataFrame, src: str) -> list[str]:
    """``['label']`` (other ``label_*`` columns are then the user's own), else the ``label_<name>``
    columns (multi-label), or [] (unlabelled)."""
    if "label" in df.columns:
        return ["label"]
    several = [c for c in df.columns if isinstance(c, str) and c.startswith("label_")]
    for c in several:
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = df.loc[pd.to_numeric(df[c], errors="coerce").isna()].iloc[0]
            raise DataError(src, f"value {bad[c]!r} is not 0 or 1", bag=str(bad["bag_id"]), field=c)
    return several
