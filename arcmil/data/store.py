"""On-disk bag stores: datasets larger than memory.

A store is a directory:
  windows.bin           every window embedding, bag after bag: raw (W, D) float16 or float32
  index.csv             one row per bag: bag_id, label (as LabelSpace.names writes it), split, offset, length
  instance_labels.bin   optional raw (W,) int8 per-window labels
  store.json            format, dtype, shape, source, the number of bags and the label space
``convert_to_store`` writes it in chunks of whole bags; ``open_store`` returns a BagSet whose windows
stay on disk and are read batch by batch.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from arcmil.data.bagset import BagSet, validate
from arcmil.data.packed import PackedBags, WindowFile, bag_chunks, bag_starts
from arcmil.data.tables import CSV_TEXT_COLUMNS
from arcmil.errors import ArcmilError, DataError
from arcmil.labels import LabelSpace, infer, merge

STORE_FORMAT = "arcmil-store-1"
STORE_DTYPES = ("float16", "float32")
INDEX_COLUMNS = ["bag_id", "label", "split", "offset", "length"]


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / "store.json").is_file()


def open_store(path: str | os.PathLike, *, require_labels: bool = True) -> BagSet:
    """The store's bags, windows left on disk. Contents were validated when the store was written."""
    path, src = Path(path), str(path)
    try:
        meta = json.loads((path / "store.json").read_text())
        index = pd.read_csv(path / "index.csv", dtype=CSV_TEXT_COLUMNS, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(src, f"not a readable arcmil store ({exc})") from None
    if meta.get("format") != STORE_FORMAT:
        raise DataError(src, f"unknown store format {meta.get('format')!r} (expected {STORE_FORMAT})")
    if list(index.columns) != INDEX_COLUMNS or len(index) != meta["n_bags"]:
        raise DataError(src, "index.csv does not match store.json", field="index")
    shape = tuple(meta["shape"])
    if (path / "windows.bin").stat().st_size != shape[0] * shape[1] * np.dtype(meta["dtype"]).itemsize:
        raise DataError(src, f"windows.bin is not {shape[0]} x {shape[1]} {meta['dtype']} (truncated?)",
                        field="windows")
    windows = WindowFile(path / "windows.bin", meta["dtype"], shape)
    bags = PackedBags(windows, index["offset"].to_numpy(), index["length"].to_numpy())
    labels = None if (index["label"] == "").all() else index["label"].to_numpy(dtype=str)
    if labels is None and require_labels:
        raise DataError(src, "missing required labels", field="labels")
    bag_ids = index["bag_id"].to_numpy(dtype=str)
    space = LabelSpace.from_dict(meta.get("label_space"))  # absent in stores from before label spaces: binary
    if labels is not None:  # validated when written: only expressed in the recorded space here
        read_as, labels = infer(labels, src, bag_ids, label_sets=space.kind == "multilabel")
        labels = space.recode(labels, read_as, src, bag_ids)
    split = None if (index["split"] == "").all() else index["split"].to_numpy(dtype=str)
    instance_labels = None
    if (path / "instance_labels.bin").exists():
        flat = np.fromfile(path / "instance_labels.bin", dtype=np.int8).astype(np.int64)
        instance_labels = [flat[o:o + n] for o, n in zip(bags.offsets, bags.lengths)]
    return BagSet(bags, labels, bag_ids, split, instance_labels, source=src, meta={"store": meta}, label_space=space)


def _table_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(str(path), "reading parquet needs pyarrow: pip install 'arcmil[parquet]'") from None
        table = pq.ParquetFile(path)
        for group in range(table.num_row_groups):  # one row group at a time: memory bounded by its size
            rows = table.read_row_group(group)
            for start in range(0, rows.num_rows, chunk_rows):
                yield rows.slice(start, chunk_rows).to_pandas()
    else:
        yield from pd.read_csv(path, dtype=CSV_TEXT_COLUMNS, chunksize=chunk_rows)


def _complete_bag_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Rows of whole bags, chunk by chunk: a bag whose rows continue in the next chunk waits for it.
    Needs each bag's rows to be contiguous, as a Stage-2 writer produces them."""
    pending = None
    try:
        for df in _table_chunks(path, chunk_rows):
            if "bag_id" not in df.columns:
                raise DataError(str(path), "missing required column", field="bag_id")
            df = df.assign(bag_id=df["bag_id"].astype(str))
            df = df if pending is None else pd.concat([pending, df], ignore_index=True)
            last = df["bag_id"].iloc[-1]
            tail = df["bag_id"] == last
            complete, pending = df[~tail], df[tail]
            if len(complete):
                yield complete
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise DataError(str(path), f"not a readable table ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if pending is not None and len(pending):
        yield pending


def iter_bag_chunks(path: str | os.PathLike, chunk_windows: int = 2**16) -> Iterator[BagSet]:
    """Validated BagSets of whole bags, about ``chunk_windows`` windows each. Tables (.csv/.parquet)
    are streamed; .npz/.pt files and ``mil:`` datasets are whole-array formats, read at once."""
    from arcmil.data.readers import TABLE_SUFFIXES, load_bags
    from arcmil.data.tables import table_to_bagset

    if not str(path).startswith("mil:") and Path(path).suffix.lower() in TABLE_SUFFIXES and Path(path).is_file():
        for frame in _complete_bag_frames(Path(path), chunk_windows):
            chunk = table_to_bagset(frame, str(path))
            # a chunk cannot know the whole file's label space (-1 alone: binary or a class?): the store
            # keeps a label column's cells as read and infers the space once over all of them
            as_read = None if chunk.labels is None or chunk.labels.ndim != 1 else np.array(
                ["" if pd.isna(v) else str(v) for v in chunk.labels])
            chunk = validate(chunk, require_labels=False)
            if as_read is not None:
                chunk.meta["labels_as_read"] = as_read
            yield chunk
        return
    bags = load_bags(path, require_labels=False)
    for index in bag_chunks(bags.lengths, chunk_windows):
        yield bags.subset(index)


class _StoreWriter:
    """Appends validated chunks to a store directory, checking what spans chunks."""

    def __init__(self, directory: Path, dtype: str, source: str):
        self.directory, self.dtype, self.source = directory, np.dtype(dtype), source
        self.windows = open(directory / "windows.bin", "wb")
        self.instance = None
        self.index, self.seen, self.n_windows, self.dim = [], set(), 0, None
        self.has_labels = self.has_split = self.has_instances = None
        self.spaces = []  # each chunk's label space and the labels a binary chunk holds, merged on close
        self.as_read = True  # every chunk's label cells as read (a label column): inferred whole on close

    def _same(self, name: str, value: bool, chunk: BagSet) -> None:
        if getattr(self, name) is None:
            setattr(self, name, value)
        elif getattr(self, name) != value:
            field = name.removeprefix("has_")
            raise DataError(self.source, f"some bags have {field} and others do not", bag=str(chunk.bag_ids[0]),
                            field=field)

    def add(self, chunk: BagSet) -> None:
        if self.dim is None:
            self.dim = chunk.dim
        elif chunk.dim != self.dim:
            raise DataError(self.source, f"embedding dimension {chunk.dim} differs from {self.dim} of the first bag",
                            bag=str(chunk.bag_ids[0]), field="embeddings")
        self._same("has_labels", chunk.labels is not None, chunk)
        self._same("has_split", chunk.split is not None, chunk)
        self._same("has_instances", chunk.instance_labels is not None, chunk)
        for bag_id in chunk.bag_ids:
            if bag_id in self.seen:
                raise DataError(self.source, "duplicate bag id (or the rows of this bag are not contiguous)",
                                bag=str(bag_id), field="bag_id")
            self.seen.add(bag_id)
        packed = PackedBags.from_list(chunk.bags)
        with np.errstate(over="ignore"):  # overflow is reported below, naming the bag
            windows = packed.gather(np.arange(len(packed))).astype(self.dtype)
        if not np.isfinite(windows).all():  # finite in float32 (validated) but not in float16
            row = int(np.argwhere(~np.isfinite(windows))[0, 0])
            bag = int(np.searchsorted(np.cumsum(packed.lengths), row, "right"))
            raise DataError(self.source, f"a value exceeds the {self.dtype} range; convert with --dtype float32",
                            bag=str(chunk.bag_ids[bag]), field="embeddings")
        self.windows.write(windows.tobytes())
        if chunk.instance_labels is not None:
            self.instance = self.instance or open(self.directory / "instance_labels.bin", "wb")
            self.instance.write(np.concatenate(chunk.instance_labels).astype(np.int8).tobytes())
        offsets = self.n_windows + bag_starts(packed.lengths)
        self.as_read &= "labels_as_read" in chunk.meta
        labels = "" if chunk.labels is None else chunk.meta.get("labels_as_read", chunk.label_space.names(chunk.labels))
        self.index.append(pd.DataFrame({
            "bag_id": chunk.bag_ids, "label": labels,
            "split": chunk.split if chunk.split is not None else "", "offset": offsets, "length": packed.lengths}))
        self.n_windows += int(packed.lengths.sum())
        if chunk.labels is not None:
            space = chunk.label_space
            self.spaces.append((space, np.unique(chunk.labels) if space.binary else None))

    def close(self) -> dict:
        self.windows.close()
        if self.instance:
            self.instance.close()
        if not self.index:
            raise DataError(self.source, "no bags found", field="embeddings")
        index = pd.concat(self.index, ignore_index=True)
        index.to_csv(self.directory / "index.csv", index=False)
        meta = {"format": STORE_FORMAT, "dtype": self.dtype.name, "shape": [self.n_windows, self.dim],
                "n_bags": len(index), "source": self.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.spaces and self.as_read:  # the cells of the whole file, read as loading it at once reads them
            meta["label_space"] = infer(index["label"].to_numpy(dtype=str), self.source,
                                        index["bag_id"].to_numpy())[0].to_dict()
        elif self.spaces:
            try:
                meta["label_space"] = merge(self.spaces).to_dict()
            except ArcmilError as exc:
                raise DataError(self.source, str(exc), field="labels") from None
        (self.directory / "store.json").write_text(json.dumps(meta, indent=2))
        return meta


def convert_to_store(path: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float16",
                     chunk_windows: int = 2**16) -> dict:
    """Write the bags of ``path`` (any supported input) as a new store at ``out``, chunk by chunk.
    Nothing is left at ``out`` if the input is bad."""
    from arcmil.outputs import staged_dir

    if dtype not in STORE_DTYPES:
        raise DataError(str(path), f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    with staged_dir(out) as tmp:
        writer = _StoreWriter(Path(tmp), dtype, str(path))
        try:
            for chunk in iter_bag_chunks(path, chunk_windows):
                writer.add(chunk)
        finally:
            writer.windows.close()
        return writer.close()
