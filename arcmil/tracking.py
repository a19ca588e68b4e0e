"""Optional experiment trackers: TensorBoard, Weights & Biases, MLflow.

Each logs the resolved config, every epoch's metrics (step = epoch), the final validation and test
metrics, and the run's plots. Nothing leaves the machine unless the user configured it: W&B runs
offline when no API key is set, MLflow writes a local file store (RUN/mlruns) unless
MLFLOW_TRACKING_URI says otherwise, TensorBoard writes RUN/tensorboard.
"""
from __future__ import annotations

import os
from pathlib import Path

from arcmil.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")


def _numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of ``metrics`` (nested dicts flattened with '/')."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--tracker {extra} needs its package: pip install 'arcmil[{extra}]'") from None


class TensorBoardTracker:
    def __init__(self, run_dir: Path, name: str, config: dict):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def log_epoch(self, epoch: int, row: dict) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)

    def log_final(self, metrics: dict) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(f"final/{key}", value, 0)

    def log_image(self, path: Path) -> None:
        import matplotlib.image

        self.writer.add_image(path.stem, matplotlib.image.imread(path)[..., :3], dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, config: dict):
        self.wandb = _require("wandb", "wandb")
        online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "arcmil"), name=name, config=config,
                                   dir=str(run_dir), mode="online" if online else "offline")

    def log_epoch(self, epoch: int, row: dict) -> None:
        self.run.log(_numbers(row), step=epoch)

    def log_final(self, metrics: dict) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in _numbers(metrics).items()})

    def log_image(self, path: Path) -> None:
        self.run.log({path.stem: self.wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, run_dir: Path, name: str, config: dict):
        self.mlflow = _require("mlflow", "mlflow")
        # the local file store is what the user asked for when no tracking server is configured
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", (run_dir / "mlruns").resolve().as_uri()))
        self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "arcmil"))
        self.mlflow.start_run(run_name=name)
        self.mlflow.log_params({k: str(v) for k, v in config.items()})

    def log_epoch(self, epoch: int, row: dict) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in _numbers(row).items()}, step=epoch)

    def log_final(self, metrics: dict) -> None:
        self.mlflow.log_metrics({f"final.{k.replace('/', '.')}": v for k, v in _numbers(metrics).items()})

    def log_image(self, path: Path) -> None:
        self.mlflow.log_artifact(str(path), artifact_path="plots")

    def close(self) -> None:
        self.mlflow.end_run()


def make_tracker(kind: str, run_dir: Path, name: str, config: dict):
    """The tracker ``kind`` (one of TRACKERS) for a run in ``run_dir``."""
    classes = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}
    if kind not in classes:
        raise ConfigError(f"unknown tracker {kind!r} (use {', '.join(TRACKERS)})")
    return classes[kind](Path(run_dir), name, config)
