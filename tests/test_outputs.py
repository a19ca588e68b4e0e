"""Outputs are written whole, readable like any new file, and never over a user's file unasked."""
import os
import stat

import numpy as np
import pytest

from arcmil import MILClassifier
from arcmil.demo import make_demo_bags
from arcmil.errors import ArcmilError
from arcmil.outputs import write_new_file, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_get_the_mode_of_any_new_file(tmp_path, umask_022):
    """Not mkstemp's private 0600: an exported model is read by a service running as another user."""
    write_text(tmp_path / "report.html", "<p>x</p>")
    write_new_file(tmp_path / "m.onnx", lambda tmp: open(tmp, "wb").write(b"graph"))
    for name in ("report.html", "m.onnx"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    os.umask(0o077)
    write_text(tmp_path / "private.txt", "x")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600  # the user's umask still rules


def test_estimator_save_refuses_an_existing_file_and_writes_whole(tmp_path):
    bags = make_demo_bags(n_bags=80, seed=1)
    clf = MILClassifier("attention_mil", epochs=1, hidden_dim=8, n_bootstrap=0).fit(bags)
    (tmp_path / "m.pth").write_bytes(b"someone's checkpoint")
    with pytest.raises(ArcmilError, match="m.pth: already exists; refusing to overwrite"):
        clf.save(tmp_path / "m.pth")
    assert (tmp_path / "m.pth").read_bytes() == b"someone's checkpoint"
    clf.save(tmp_path / "m.pth", overwrite=True)
    np.testing.assert_array_equal(MILClassifier.load(tmp_path / "m.pth").predict_proba(bags), clf.predict_proba(bags))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temporary file left behind
