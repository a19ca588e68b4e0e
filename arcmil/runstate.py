"""Crash-safe run directories: resolved config, provenance, status, and a resumable state per epoch.

A run directory holds from its first second:
  config.yaml      the resolved settings (``arcmil train --config RUN/config.yaml`` reruns it)
  run_info.json    package versions, data fingerprint (SHA-256), git commit when available
  run_state.json   status: running | complete | failed (with the error), last finished epoch
  resume.pt        model, optimizer, scheduler, early-stopping state, RNG states, history after
                   the last finished epoch (``arcmil train --resume RUN``); removed on completion
Every file is written to a temporary sibling and renamed into place, so a kill at any moment leaves
either the previous or the new version, never a torn one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from arcmil.errors import ArcmilError
from arcmil.outputs import atomic_write, write_text

STATE_FILE, RESUME_FILE, CONFIG_FILE, INFO_FILE = "run_state.json", "resume.pt", "config.yaml", "run_info.json"


def is_local_path(data: str | None) -> bool:
    """Whether a data setting names a file or directory (not the demo data or a ``mil:`` dataset)."""
    return bool(data) and not str(data).startswith("mil:")


def data_fingerprint(data: str | None, legacy: bool = False) -> dict:
    """SHA-256 of the data file's content (of every file of a store directory, with its name there); the
    name for built-in data. ``legacy``: the digest runs recorded before a file's own name was left out."""
    if not is_local_path(data):
        return {"source": data or "built-in demo data", "sha256": None}
    path = Path(data)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if legacy:
            digest.update(file.name.encode())
        elif path.is_dir():  # a store's files by their names within it; a file's own name may change
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"source": str(path), "sha256": digest.hexdigest()}


def git_commit() -> str | None:
    """The commit of the arcmil checkout in use, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_provenance(out: Path, command: str, settings: dict, environment: dict) -> None:
    """config.yaml (the settings, to rerun with --config) and run_info.json (the command, versions, data
    hash, commit)."""
    write_text(out / CONFIG_FILE, yaml.safe_dump(settings, sort_keys=False))
    info = {"command": command, "versions": environment, "data": data_fingerprint(settings.get("data")),
            "git_commit": git_commit()}
    write_text(out / INFO_FILE, json.dumps(info, indent=2))


def record_resume(out: Path, changed: dict) -> None:
    """Add a resume, with the settings it changed (those that change no result), to run_info.json; a
    moved file's new path also to config.yaml, so the next resume and the report find it."""
    info = json.loads((out / INFO_FILE).read_text())
    info.setdefault("resumes", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed})
    write_text(out / INFO_FILE, json.dumps(info, indent=2))
    moved = {k: v for k, v in changed.items() if k in ("data", "space")}
    if moved:
        config = yaml.safe_load((out / CONFIG_FILE).read_text())
        write_text(out / CONFIG_FILE, yaml.safe_dump({**config, **moved}, sort_keys=False))


def start_run(out: Path, command: str, settings: dict, environment: dict) -> None:
    """Create the run directory with its config, provenance and 'running' status."""
    out.mkdir(parents=True, exist_ok=True)
    write_provenance(out, command, settings, environment)
    set_status(out, "running")


@contextlib.contextmanager
def lifecycle(out: Path, command: str, settings: dict, environment: dict, *, resuming: bool, writer: bool = True):
    """Record a run's status around its work: 'running' (a new run also gets config.yaml and
    run_info.json), then 'complete', or 'failed' with the error. ``writer``: this process writes
    (rank 0 under torchrun)."""
    if writer and not resuming:
        start_run(out, command, settings, environment)
    try:
        yield
    except BaseException as exc:
        if writer:
            set_status(out, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if writer:
        set_status(out, "complete")


def set_status(out: Path, status: str, **fields) -> None:
    state = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    write_text(out / STATE_FILE, json.dumps(state, indent=2))


def read_status(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise ArcmilError(f"{out}: not an arcmil run directory (no readable {STATE_FILE})") from None


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA RNG states as plain data and tensors (loadable with
    weights_only); CUDA's is one tensor per visible GPU (dropout on a GPU draws from it)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, gauss],
            "python": [version, list(internal), py_gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():  # absent in states saved on a machine without CUDA
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


def save_resume(out: Path, state: dict) -> None:
    atomic_write(out / RESUME_FILE, lambda tmp: torch.save(state, tmp))


def load_resume(out: Path) -> dict | None:
    """The state after the last finished epoch, or None when the run died before finishing one."""
    path = out / RESUME_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise ArcmilError(f"{path}: not a readable resume state ({str(exc).splitlines()[0]})") from None
