"""Command line: ``arcmil train | compare | predict | demo-data``. Thin: parses, then calls the library."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from arcmil import __version__
from arcmil.errors import ArcmilError, DataError
from arcmil.models import model_names
from arcmil.settings import CHOICES, DEFAULTS, MODEL_FIELDS, TRAIN_FIELDS, model_overrides, read_yaml, train_config

DEFAULT_MODELS = "attention_mil,transformer_mil,transmil"
COMPARE_COLUMNS = ("model", "tag", "test_roc_auc", "test_pr_auc", "test_f1", "test_precision", "test_recall",
                   "threshold", "best_epoch")


def _add_setting_flags(parser: argparse.ArgumentParser, fields: dict[str, type], title: str) -> None:
    group = parser.add_argument_group(title)
    for name, kind in fields.items():
        flag = "--" + name.replace("_", "-")
        help = f"default: {DEFAULTS[name]}"
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, choices=CHOICES.get(name), help=help,
                               metavar=None if name in CHOICES else kind.__name__.upper())


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="Stage-2 bags (.npz, .pt, .csv, .parquet); default: built-in demo data")
    parser.add_argument("--out", help="new run directory (default: runs/<name>_<timestamp>)")
    parser.add_argument("--config", help="YAML file of settings (flag names with underscores); flags win")
    _add_setting_flags(parser, TRAIN_FIELDS, "training")
    _add_setting_flags(parser, MODEL_FIELDS, "model hyper-parameters")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arcmil", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"arcmil {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate one model")
    train.add_argument("--model", choices=model_names(), help="registered model (default attention_mil)")
    _add_run_flags(train)

    compare = commands.add_parser("compare", help="train several models through the identical pipeline")
    compare.add_argument("--models", help=f"comma-separated model names (default {DEFAULT_MODELS})")
    _add_run_flags(compare)

    predict = commands.add_parser("predict", help="score bags with a trained checkpoint")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--data", required=True)
    predict.add_argument("--out", required=True, help="predictions CSV to write")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="auto")

    demo = commands.add_parser("demo-data", help="write the built-in demo dataset")
    demo.add_argument("--out", required=True, help="file to write (.npz, .pt, .csv or .parquet)")
    demo.add_argument("--n-bags", type=int, default=1500)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true")
    return parser


def resolve_settings(args: argparse.Namespace) -> dict:
    """YAML (if any), then every flag the user gave; None means 'not given'."""
    settings = read_yaml(args.config) if args.config else {}
    for key in ("model", "models", "data", "out", *TRAIN_FIELDS, *MODEL_FIELDS):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def _bags(settings: dict):
    from arcmil.data import load_bags
    from arcmil.demo import make_demo_bags

    return load_bags(settings["data"]) if settings.get("data") else make_demo_bags()


def cmd_train(args) -> None:
    from arcmil.pipeline import run_experiment
    from arcmil.report import default_run_dir, staged_dir, write_run

    settings = resolve_settings(args)
    model = settings.get("model", "attention_mil")
    cfg, overrides = train_config(settings), model_overrides(model, settings, strict=True)
    out = Path(settings["out"]) if settings.get("out") else None
    if out is not None and out.exists() and any(out.iterdir()):  # fail before training, not after
        raise ArcmilError(f"{out}: already exists and is not empty; refusing to overwrite (choose another --out)")
    result = run_experiment(_bags(settings), model, cfg, **overrides)
    out = out or default_run_dir("runs", result.tag)
    with staged_dir(out) as tmp:
        write_run(tmp, result)
    print(format_table([_row(result)], COMPARE_COLUMNS))
    print(f"run written to {out}")


def _row(result) -> dict:
    from arcmil.report import results_row

    return results_row(result.results)


def format_table(rows: list[dict], columns) -> str:
    """A Markdown table; floats with 4 decimals."""
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def cmd_compare(args) -> None:
    import pandas as pd

    from arcmil.models import get_entry
    from arcmil.pipeline import run_experiment
    from arcmil.plots import plot_roc
    from arcmil.report import default_run_dir, staged_dir, write_run

    settings = resolve_settings(args)
    names = [m.strip() for m in settings.get("models", DEFAULT_MODELS).split(",") if m.strip()]
    for name in names:
        get_entry(name)  # unknown names fail before any training
    cfg = train_config(settings)
    out = Path(settings["out"]) if settings.get("out") else default_run_dir("runs", "compare")
    if out.exists() and any(out.iterdir()):
        raise ArcmilError(f"{out}: already exists and is not empty; refusing to overwrite (choose another --out)")
    bags = _bags(settings)
    results = [run_experiment(bags, name, cfg, **model_overrides(name, settings, strict=False)) for name in names]
    rows = [_row(r) for r in results]
    table = format_table(rows, COMPARE_COLUMNS)
    with staged_dir(out) as tmp:
        for result in results:
            write_run(tmp / result.model_name, result)
        pd.DataFrame(rows).to_csv(tmp / "comparison.csv", index=False)
        source = bags.source
        (tmp / "comparison.md").write_text(
            f"# arcmil compare\n\ndata: `{source}`, seed {cfg.seed}; test metrics at each model's validation "
            f"threshold ({cfg.threshold_method})\n\n{table}\n")
        plot_roc({r.tag: (r.evaluations["test"].labels, r.evaluations["test"].probs) for r in results},
                 tmp / "roc.png", title="Test ROC")
    print(table)
    print(f"comparison written to {out}")


def cmd_predict(args) -> None:
    import pandas as pd

    from arcmil.checkpoint import load_checkpoint
    from arcmil.data import load_bags, make_loader
    from arcmil.data.prepare import Normalizer
    from arcmil.metrics import binary_metrics
    from arcmil.pipeline import check_fits, predictions_frame
    from arcmil.report import write_new_file
    from arcmil.train import evaluate, select_device

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ArcmilError(f"{out}: already exists; refusing to overwrite (pass --overwrite or choose another name)")
    device = select_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    bags = load_bags(args.data, require_labels=False)
    expected = meta["model_config"]["input_dim"]
    if bags.dim != expected:
        raise DataError(bags.source, f"embedding dimension {bags.dim} does not match the checkpoint "
                        f"{args.checkpoint} (input_dim {expected})", field="embeddings")
    check_fits(bags, model.config)
    bags = Normalizer.from_dict(meta["normalization"])(bags)
    ev = evaluate(model, make_loader(bags, args.batch_size), device=device)
    frame = predictions_frame(bags, ev, meta["threshold"], split=bags.split)
    write_new_file(out, lambda tmp: frame.to_csv(tmp, index=False), overwrite=args.overwrite)
    print(f"scored {len(bags)} bags with {meta['tag']} at threshold {meta['threshold']:.4f} -> {out}")
    if bags.labels is not None and len(np.unique(bags.labels)) == 2:
        metrics = binary_metrics(bags.labels, ev.probs[np.argsort(ev.index)], meta["threshold"])
        print(pd.Series({k: v for k, v in metrics.items() if not isinstance(v, dict)}).to_string())


def cmd_demo_data(args) -> None:
    from arcmil.data import save_bags
    from arcmil.demo import make_demo_bags
    from arcmil.report import write_new_file

    bags = make_demo_bags(args.n_bags, seed=args.seed)
    suffix = Path(args.out).suffix  # the temp file keeps the suffix that picks the format
    write_new_file(args.out, lambda tmp: Path(save_bags(bags, tmp + suffix)).replace(tmp), overwrite=args.overwrite)
    print(f"wrote {len(bags)} demo bags ({int(bags.labels.sum())} positive, {bags.dim}-d) to {args.out}")


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "predict": cmd_predict, "demo-data": cmd_demo_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ArcmilError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"arcmil: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
