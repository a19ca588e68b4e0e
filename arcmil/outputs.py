"""Writing outputs whole, never over a user's files: the one home of "write to a temporary sibling,
then rename" for files (``atomic_write``, ``write_new_file``), directories (``staged_dir``) and sets
of files published into a run directory (``publish_files``). A kill at any moment leaves the old
state or the new one, never a torn file.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from arcmil.errors import ArcmilError


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, then rename over ``path`` (atomic on POSIX). The temporary file is created
    with mode 0666 less the umask, as any new file (not mkstemp's private 0600): an exported model or
    a report is read by other users and services."""
    tmp = path.parent / f".{path.name}.partial-{secrets.token_hex(8)}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def default_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """parent/name_YYYYmmdd-HHMMSS, with a counter if that exists already."""
    base = Path(parent) / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def refuse_existing_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path, unless it already holds files (or is a file): then ArcmilError."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ArcmilError(f"{path}: already exists and is not empty; refusing to overwrite (choose another --out)")
    return path


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike):
    """Yield a temporary sibling directory that becomes ``final`` only if the block succeeds.

    Refuses a ``final`` that already holds files; on failure the partial outputs are removed."""
    final = refuse_existing_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            final.rmdir()
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_existing_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path``, unless a file is there and ``overwrite`` was not asked for (checked before slow work too)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArcmilError(f"{path}: already exists; refusing to overwrite (pass --overwrite, in Python "
                          "overwrite=True, or choose another name)")
    return path


def write_new_file(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path``; refuse an existing file unless asked."""
    path = refuse_existing_file(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def publish_files(directory: str | os.PathLike, write) -> None:
    """``write(tmp_dir)``, then move each file it made into ``directory``: each appears whole (rename)."""
    with tempfile.TemporaryDirectory(prefix=".outputs-", dir=directory) as tmp:
        write(Path(tmp))
        for path in Path(tmp).iterdir():
            path.replace(Path(directory) / path.name)
