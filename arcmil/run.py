"""One run of ``train``, ``compare`` or ``cv`` around the library call that does the work.

A ``Run`` owns what every command shares: the output directory (new, or an interrupted one being
resumed with its data unchanged), the resolved config, this process's place under torchrun, the
status lifecycle, the tracker, and publishing outputs so that each file appears whole.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import yaml

from arcmil.distributed import SINGLE, World
from arcmil.errors import ArcmilError
from arcmil.outputs import publish_files
from arcmil.runstate import (
    CONFIG_FILE,
    INFO_FILE,
    data_fingerprint,
    is_local_path,
    lifecycle,
    load_resume,
    read_status,
    record_resume,
    set_status,
)
from arcmil.settings import COMMAND_KEYS, RUN_KEYS, ExperimentConfig, read_yaml, resolve

# settings that change no result: a resumed run may be given new values (recorded in run_info.json)
RESUME_MAY_CHANGE = ("device", "progress", "score_train")
MOVABLE = ("data", "space")  # files a resumed run may find at a new path, with the same content


def absolute_paths(settings: dict) -> dict:
    """``settings`` with the data file, search space file and SQLite storage given relative made absolute,
    so a run resumes (and its report finds its data) from any working directory."""
    settings = dict(settings)
    for key in MOVABLE:
        if is_local_path(settings.get(key)):
            settings[key] = str(Path(settings[key]).resolve())
    storage = settings.get("storage")
    if storage and storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        settings["storage"] = "sqlite:///" + str(Path(storage.removeprefix("sqlite:///")).resolve())
    return settings


def _names(models) -> list[str]:
    return [m.strip() for m in str(models or "").split(",") if m.strip()]


def _has_digest(data: str, sha256: str) -> bool:
    """Whether ``data`` has the recorded digest (or the one runs recorded before a file's own name was
    left out of it, computed only when the first differs)."""
    return data_fingerprint(data)["sha256"] == sha256 or data_fingerprint(data, legacy=True)["sha256"] == sha256


def _same_content(key: str, recorded: str | None, given: str | None, info: dict) -> bool:
    """Whether a movable file given at a new path is the recorded one: data by the SHA-256 recorded in
    run_info.json (demo and mil: data have none: never), a search space by comparing the two files."""
    if not (is_local_path(given) and Path(given).is_file()):
        return False
    if key == "data":
        sha256 = info["data"]["sha256"]
        return bool(sha256) and _has_digest(given, sha256)
    return is_local_path(recorded) and Path(recorded).is_file() and \
        Path(recorded).read_bytes() == Path(given).read_bytes()


class Run:
    """``config``: the run's resolved settings; ``out``: its directory; ``resuming``: whether it
    continues an interrupted run there. Use ``with run.started(): ...`` around the work."""

    def __init__(self, config: ExperimentConfig, out: Path, resuming: bool):
        self.config, self.out, self.resuming = config, Path(out), resuming
        self.world: World = SINGLE
        self.tracker = None
        self.bags = None  # set by load_bags; the report's gallery shows some of them
        self.resumed_with: dict = {}  # settings a resumed run was given that differ from the recorded ones

    @classmethod
    def new(cls, command: str, settings: dict) -> "Run":
        """A fresh run of ``command`` with ``settings`` (YAML and flags merged); its directory is
        ``settings['out']`` or runs/<name>_<time>, refused if it holds files (checked now, created later).
        A data file's path is recorded absolute, so the run resumes (and its report finds the data) from
        any working directory."""
        from arcmil.outputs import default_run_dir, refuse_existing_dir

        settings = absolute_paths(settings)
        out = settings.pop("out", None)
        config = resolve(command, settings)
        return cls(config, refuse_existing_dir(out or default_run_dir("runs", config.run_name())), resuming=False)

    @classmethod
    def resume(cls, command: str, out: str | Path, given: dict | None = None) -> "Run":
        """The interrupted run in ``out``, continued exactly as recorded: refused when it is complete, was
        started by another command, its data changed, or ``given`` (the settings passed with --resume) asks
        for something else than it recorded. Only RESUME_MAY_CHANGE settings may differ (they change no
        result); ``data`` and ``space`` may name the same file (same content) at another path."""
        out, given = Path(out), absolute_paths({k: v for k, v in (given or {}).items() if v is not None})
        if read_status(out)["status"] == "complete":
            raise ArcmilError(f"{out}: this run is complete; nothing to resume")
        info = json.loads((out / INFO_FILE).read_text())
        recorded = read_yaml(out / CONFIG_FILE)
        started_by = info.get("command") or _command_of(out / CONFIG_FILE)
        if started_by != command:
            raise ArcmilError(f"{out}: a run of arcmil {started_by}, not {command}; resume it with "
                              f"`arcmil {started_by} --resume {out}`")
        if "out" in given and Path(given.pop("out")).resolve() != out.resolve():
            raise ArcmilError(f"--out names another directory than --resume {out}; a run resumes in its own directory")
        config = resolve(command, recorded)
        # another model cannot be resolved with the recorded model's settings: compared on its own
        refused = [f"{k}={recorded.get(k)!r} (given {given.pop(k)!r})" for k in ("model", "models")
                   if k in given and _names(given[k]) != _names(recorded.get(k))]
        asked = resolve(command, {**recorded, **given})
        asked_settings = asked.to_dict()
        changes = {k: (v, asked_settings[k]) for k, v in config.to_dict().items() if asked_settings[k] != v}
        refused += [f"{k}={was!r} (given {now!r})" for k, (was, now) in changes.items()
                    if k not in RESUME_MAY_CHANGE and not (k in MOVABLE and _same_content(k, was, now, info))]
        if refused:
            raise ArcmilError(f"{out}: --resume continues the run as it was started: {', '.join(refused)}; "
                              "start a new run (--out) to change them")
        data, sha256 = asked.data, info["data"]["sha256"]
        if is_local_path(data) and not Path(data).exists():
            raise ArcmilError(f"{out}: its data {data} is not found (from {Path.cwd()}); give --data with the "
                              "same file at its new path")
        if sha256 and "data" not in changes and not _has_digest(data, sha256):  # moved data: checked above
            raise ArcmilError(f"{data}: the data changed since the run in {out} started (SHA-256 differs); "
                              "start a new run instead of resuming")
        run = cls(asked, out, resuming=True)
        run.resumed_with = {k: now for k, (_, now) in changes.items()}
        return run

    def load_bags(self):
        """The run's bags, checked against every model (split or folds, lengths; a search's space and
        Optuna) before any output exists."""
        from arcmil.checks import check_inputs
        from arcmil.data import load_bags
        from arcmil.demo import make_demo_bags

        config = self.config
        bags = load_bags(config.data) if config.data else make_demo_bags()
        # compare makes ensembles only of the models that can have them (arcmil.compare.compared)
        train = replace(config.train, ensemble=1) if config.command == "compare" else config.train
        for name in config.models:
            check_inputs(bags, name, train, config.overrides(name), folds=config.folds, evaluation=config.evaluation)
        if config.search is not None:
            from arcmil.tune import check_search

            check_search(config.search, {name: config.overrides(name) for name in config.models})
        self.bags = bags
        return bags

    @property
    def study_storage(self) -> str | None:
        """Where this run's searches keep their Optuna studies: the storage URL given, else study.db in
        the run directory (None: the run searches nothing)."""
        search = self.config.search
        if search is None:
            return None
        return search.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def owns_running_trials(self) -> bool:
        """Whether trials marked running in the study were left by this run's killed process: a resumed
        run with its own study file (a shared storage's running trials may be another machine's)."""
        return self.resuming and self.config.search is not None and self.config.search.storage is None

    def resume_state(self) -> dict | None:
        """A resumed training run's state after its last finished epoch (None for a new run)."""
        return load_resume(self.out) if self.resuming else None

    @property
    def writes(self) -> bool:
        """Whether this process writes outputs (rank 0 under torchrun)."""
        return self.world.is_main

    @contextlib.contextmanager
    def started(self):
        """Join the torchrun world, record status around the block (config.yaml and run_info.json for a
        new run; 'complete' or 'failed' at the end) and open the tracker on the writing rank."""
        from arcmil.distributed import init_world, select_device
        from arcmil.pipeline import environment
        from arcmil.tracking import make_tracker

        self.world = init_world(select_device(self.config.train.device))
        settings = self.config.to_dict()
        if self.writes and self.resuming:
            record_resume(self.out, self.resumed_with)
        with lifecycle(self.out, self.config.command, settings, environment(), resuming=self.resuming,
                       writer=self.writes):
            if self.writes and self.config.tracker:
                self.tracker = make_tracker(self.config.tracker, self.out, self.out.name, settings)
            try:
                yield self
            finally:
                if self.tracker:
                    self.tracker.close()

    def progress(self, **fields) -> None:
        """Record progress in the status file (e.g. ``epoch=3``, ``models_done=[...]``)."""
        if self.writes:
            set_status(self.out, "running", **fields)

    def log_epoch(self, epoch: int, row: dict) -> None:
        if self.tracker:
            self.tracker.log_epoch(epoch, row)

    def publish(self, write, final_metrics: dict | None = None) -> None:
        """``write(tmp_dir)``, then move each file it made into the run directory (each appears whole by
        rename); then write report.html from them and give the tracker ``final_metrics`` and the plots."""
        from arcmil.html_report import write_report

        publish_files(self.out, write)
        write_report(self.out, self.bags)
        if self.tracker:
            if final_metrics:
                self.tracker.log_final(final_metrics)
            for image in sorted(self.out.glob("*.png")):
                self.tracker.log_image(image)


def _command_of(config_file: Path) -> str | None:
    """The command whose run keys (model or models, folds, trials …) are exactly those of ``config_file``
    (for runs from before the command was recorded in run_info.json; settings added since then do not
    matter)."""
    recorded = set(yaml.safe_load(config_file.read_text()) or {}) & set(RUN_KEYS)
    return next((command for command, keys in COMMAND_KEYS.items() if set(keys) == recorded), None)
