"""report.html: self-contained, written by train, compare and cv, rebuilt by `arcmil report`, and
rendered by a real headless browser (Debian's chromium; CI installs it and sets
ARCMIL_REQUIRE_BROWSER=1, so there a missing browser fails the test instead of skipping it)."""
import base64
import dataclasses
import os
import re
import shutil
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import pytest

from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags

FAST = ["--epochs", "2", "--n-bootstrap", "0", "--no-progress", "--hidden-dim", "16", "--d-model", "32", "--nhead",
        "2", "--dim-feedforward", "64"]


def browser() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if found is None:
        if os.environ.get("ARCMIL_REQUIRE_BROWSER"):
            pytest.fail("no chromium to render report.html (CI installs Debian's chromium)")
        pytest.skip("no chromium on this machine")
    return found


# user data shown in the report: each must arrive as text, never as markup the browser runs
HOSTILE_ID = "<img src=x onerror=alert(1)>"
HOSTILE_FILE = "bags<svg onload=alert(2)>.npz"
HOSTILE_DIR = "cmp<b onmouseover=alert(3)>"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    bags = make_demo_bags(n_bags=120, seed=4)
    bags = dataclasses.replace(bags, bag_ids=np.array([f"{HOSTILE_ID}{i}" for i in range(len(bags))]))
    data = save_bags(bags, root / HOSTILE_FILE)
    out = root / HOSTILE_DIR
    assert main(["compare", "--models", "attention_mil,transmil", "--seeds", "0,1", "--data", str(data),
                 "--out", str(out), *FAST]) == 0
    return out


def test_compare_writes_a_self_contained_report(compared):
    html = (compared / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "nothing may be fetched from a network"
    assert html.count('src="data:image/png;base64,') >= 3 + 2 + 8  # curves, training curves, a gallery per model
    for text in ("attention_mil", "transmil", "Paired tests", "true positive", "false negative", "Configuration",
                 "models: attention_mil,transmil"):
        assert text in html, text


def test_user_data_is_escaped_in_the_report(compared):
    html = (compared / "report.html").read_text()
    for hostile in (HOSTILE_ID, HOSTILE_FILE, HOSTILE_DIR):
        assert hostile not in html, hostile
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the gallery caption of a hostile bag id
    assert "bags&lt;svg onload=alert(2)&gt;.npz" in html  # the data path, in the data table and the config
    assert "cmp&lt;b onmouseover=alert(3)&gt;" in html  # the directory name in the title


def test_a_real_browser_renders_the_table_and_images(compared, tmp_path):
    chromium = browser()
    url = (compared / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    rows = re.findall(r'<tr class="result-row">(.*?)</tr>', dom, re.S)
    assert any("attention_mil" in r for r in rows) and any("transmil" in r for r in rows), dom[:2000]
    # the browser built no element from user data: the hostile names are DOM text
    assert "<svg" not in dom and "onerror=" not in dom.replace("onerror=alert(1)&gt;", "") and "<b " not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom and "&lt;svg onload=alert(2)&gt;" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,1600", url], capture_output=True,
                   timeout=120)
    pixels = plt.imread(shot)[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert not_white > 0.05 and pixels.std() > 0.05, (not_white, pixels.std())  # text, tables and figures drawn
    colour = (np.ptp(pixels, axis=-1) > 0.2).mean()
    assert colour > 0.001, colour  # the curves' coloured lines are there, not just black text


def test_train_and_cv_write_reports_and_report_rebuilds_them(tmp_path, capsys):
    data = save_bags(make_demo_bags(n_bags=90, seed=5), tmp_path / "bags.npz")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "train"), "--epochs", "2", "--n-bootstrap",
                 "0", "--no-progress", "--hidden-dim", "16"]) == 0
    assert main(["cv", "--data", str(data), "--out", str(tmp_path / "cv"), "--folds", "3", "--repeats", "1",
                 "--epochs", "2", "--no-progress", "--hidden-dim", "16"]) == 0
    train_report = (tmp_path / "train" / "report.html").read_text()
    assert "Result (test split)" in train_report
    for figure in ("roc.png", "pr.png", "training_curves.png", "calibration.png"):  # one model: its own figures
        assert base64.b64encode((tmp_path / "train" / figure).read_bytes()).decode() in train_report, figure
    cv_report = (tmp_path / "cv" / "report.html").read_text()
    assert "Cross-validation, mean ± std over folds" in cv_report and "Folds" in cv_report
    written = (tmp_path / "train" / "report.html").read_text()
    (tmp_path / "train" / "report.html").unlink()
    assert main(["report", str(tmp_path / "train")]) == 0

    def timeless(html):  # all but the line that says when the page was written
        return re.sub(r"written \S+ \S+ from", "written from", html)

    assert timeless((tmp_path / "train" / "report.html").read_text()) == timeless(written)  # rebuilt the same
    assert main(["report", str(tmp_path)]) == 2
    assert "not an arcmil run directory" in capsys.readouterr().err
