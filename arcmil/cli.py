"""Command line: ``arcmil train | compare | cv | predict | explain | convert | demo-data``; thin over the library."""
from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from arcmil import __version__
from arcmil.errors import ArcmilError, DataError
from arcmil.models import model_names
from arcmil.settings import (
    CHOICES,
    DEFAULTS,
    MODEL_FIELDS,
    RUN_KEYS,
    TRAIN_FIELDS,
    model_overrides,
    read_yaml,
    train_config,
)

DEFAULT_MODELS = "attention_mil,transformer_mil,transmil"


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
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last finished epoch")
    train.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    train.add_argument("--tracker", choices=("tensorboard", "wandb", "mlflow"),
                       help="log config, epochs, final metrics and plots (extras arcmil[tensorboard|wandb|mlflow])")
    _add_run_flags(train)

    compare = commands.add_parser("compare", help="train several models through the identical pipeline")
    compare.add_argument("--models", help=f"comma-separated model names (default {DEFAULT_MODELS})")
    compare.add_argument("--seeds", help="comma-separated seeds: mean ± std and paired tests over them")
    compare.add_argument("--folds", type=int, help="repeated stratified k-fold CV (one repeat per seed)")
    compare.add_argument("--val-fraction", type=float, help="validation share of each training fold (0.2)")
    compare.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    compare.add_argument("--resume", metavar="OUT_DIR", help="finish an interrupted comparison (done models are kept)")
    _add_run_flags(compare)

    cv = commands.add_parser("cv", help="repeated stratified k-fold cross-validation of one model")
    cv.add_argument("--model", choices=model_names(), help="registered model (default attention_mil)")
    cv.add_argument("--folds", type=int, help="number of folds (default 10)")
    cv.add_argument("--repeats", type=int, help="repeats with seeds seed, seed+1, … (default 5)")
    cv.add_argument("--val-fraction", type=float, help="validation share of each training fold (0.2)")
    cv.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    cv.add_argument("--resume", metavar="OUT_DIR", help="finish an interrupted cross-validation (done folds are kept)")
    _add_run_flags(cv)

    predict = commands.add_parser("predict", help="score bags with a trained checkpoint")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--data", required=True)
    predict.add_argument("--out", required=True, help="predictions CSV to write")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 …")
    predict.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")

    explain = commands.add_parser("explain", help="per-window importance by three methods")
    explain.add_argument("--checkpoint", required=True)
    explain.add_argument("--data", required=True)
    explain.add_argument("--out", required=True, help="new directory for importances.csv and heatmaps")
    explain.add_argument("--methods", default="weights,occlusion,integrated_gradients")
    explain.add_argument("--ig-steps", type=int, default=32, help="integrated-gradient path steps")
    explain.add_argument("--n-plots", type=int, default=12, help="bags shown in each heatmap")
    explain.add_argument("--split", choices=("train", "val", "test"), help="explain only this split's bags")
    explain.add_argument("--device", default="auto")

    convert = commands.add_parser("convert", help="write bags as an on-disk store for data larger than memory")
    convert.add_argument("--data", required=True, help="any supported input (.npz, .pt, .csv, .parquet, mil:NAME)")
    convert.add_argument("--out", required=True, help="new store directory")
    convert.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                         help="window storage precision (default float16: half the disk, read as float32)")
    convert.add_argument("--chunk-windows", type=int, default=2**16, help="windows per written chunk")

    demo = commands.add_parser("demo-data", help="write the built-in demo dataset")
    demo.add_argument("--out", required=True, help="file to write (.npz, .pt, .csv or .parquet)")
    demo.add_argument("--n-bags", type=int, default=1500)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true")
    return parser


def resolve_settings(args: argparse.Namespace) -> dict:
    """The data source's preset (if any), then YAML (if any), then every flag the user gave; None
    means 'not given'."""
    from arcmil.data.mil_datasets import source_preset

    settings = read_yaml(args.config) if args.config else {}
    for key in (*RUN_KEYS, *TRAIN_FIELDS, *MODEL_FIELDS):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return {**source_preset(settings.get("data")), **settings}


def _bags(settings: dict):
    from arcmil.data import load_bags
    from arcmil.demo import make_demo_bags

    return load_bags(settings["data"]) if settings.get("data") else make_demo_bags()


def _fresh_out(settings: dict, default_name: str) -> Path:
    """The output directory, checked before any training so that a clash fails fast."""
    from arcmil.report import default_run_dir, refuse_existing_dir

    return refuse_existing_dir(settings["out"] if settings.get("out") else default_run_dir("runs", default_name))


def _model_names(settings: dict) -> list[str]:
    from arcmil.models import get_entry

    names = [m.strip() for m in settings.get("models", DEFAULT_MODELS).split(",") if m.strip()]
    for name in names:
        get_entry(name)  # unknown names fail before any training
    return names


def _seeds(settings: dict, cfg) -> list[int]:
    text = str(settings.get("seeds", cfg.seed))
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ArcmilError(f"--seeds expects comma-separated integers, got {text!r}") from None


def _join_world(device: str):
    """This process's place among the processes torchrun started (a single process otherwise)."""
    from arcmil.distributed import init_world
    from arcmil.train import select_device

    return init_world(select_device(device))


def _resumable(args, default_name) -> tuple[dict, Path, bool]:
    """(settings, output directory, resuming?): the interrupted run's (``--resume``) or a new one's,
    named ``default_name(settings)`` unless --out says otherwise."""
    from arcmil.runstate import CONFIG_FILE, read_status

    if getattr(args, "resume", None):
        out = Path(args.resume)
        if read_status(out)["status"] == "complete":
            raise ArcmilError(f"{out}: this run is complete; nothing to resume")
        return read_yaml(out / CONFIG_FILE), out, True
    settings = resolve_settings(args)
    return settings, _fresh_out(settings, default_name(settings)), False


def _train_settings(args) -> tuple[dict, Path, dict | None]:
    """(resolved settings, run directory, resume state): a new run's, or the interrupted run's."""
    from arcmil.models.registry import make_config
    from arcmil.runstate import load_resume
    from arcmil.settings import resolved_train_settings

    def tag(settings):
        model = settings.get("model", "attention_mil")
        return make_config(model, **model_overrides(model, settings)).tag()

    settings, out, resuming = _resumable(args, tag)
    return (settings, out, load_resume(out)) if resuming else (resolved_train_settings(settings), out, None)


def cmd_train(args) -> None:
    import yaml

    from arcmil.compare import SINGLE_COLUMNS
    from arcmil.pipeline import check_inputs, environment, run_experiment
    from arcmil.report import markdown_table, results_row, write_run
    from arcmil.runstate import RESUME_FILE, lifecycle, save_resume, set_status
    from arcmil.tracking import make_tracker

    settings, out, resume = _train_settings(args)
    if args.print_config:
        print(yaml.safe_dump(settings, sort_keys=False), end="")
        return
    model = settings["model"]
    cfg, overrides = train_config(settings), model_overrides(model, settings, strict=True)
    bags = _bags(settings)
    check_inputs(bags, model, cfg, overrides)  # bad input fails here, before the run directory exists
    world = _join_world(cfg.device)
    with lifecycle(out, settings, environment(), resuming=resume is not None, writer=world.is_main):
        tracker = None
        if world.is_main and settings.get("tracker"):
            tracker = make_tracker(settings["tracker"], out, out.name, settings)

        def on_epoch(state):
            save_resume(out, state)
            set_status(out, "running", epoch=state["epoch"])
            if tracker:
                tracker.log_epoch(state["epoch"], state["history"][-1])

        try:
            result = run_experiment(bags, model, cfg, world, resume=resume,
                                    on_epoch=on_epoch if world.is_main else None, **overrides)
            if not world.is_main:  # every rank holds the same result; rank 0 writes it
                return
            _publish(out, lambda tmp: write_run(tmp, result))
            if tracker:
                tracker.log_final({"validation": result.results["validation"], "test": result.results["test"],
                                   "threshold": result.threshold})
                for image in sorted(out.glob("*.png")):
                    tracker.log_image(image)
        finally:
            if tracker:
                tracker.close()
    (out / RESUME_FILE).unlink(missing_ok=True)
    print(markdown_table([results_row(result.results)], SINGLE_COLUMNS))
    print(f"run written to {out}")


def _resolved(settings: dict, cfg) -> dict:
    """The given settings (minus --out) with every training setting filled in."""
    from dataclasses import asdict

    return {**{k: v for k, v in settings.items() if k != "out"}, **asdict(cfg)}


def _printed_config(args, settings: dict, cfg) -> bool:
    import yaml

    if args.print_config:
        print(yaml.safe_dump(_resolved(settings, cfg), sort_keys=False), end="")
    return args.print_config


def cmd_compare(args) -> None:
    from arcmil.compare import MODEL_SUMMARY, compare_models, read_model, write_comparison, write_model
    from arcmil.pipeline import check_inputs, environment
    from arcmil.report import staged_dir
    from arcmil.runstate import lifecycle, set_status

    settings, out, resuming = _resumable(args, lambda _: "compare")
    names, cfg = _model_names(settings), train_config(settings)
    overrides = {name: model_overrides(name, settings, strict=False) for name in names}
    if _printed_config(args, settings, cfg):
        return
    bags = _bags(settings)
    if not settings.get("folds"):
        for name in names:  # bad input fails here, before the output directory exists
            check_inputs(bags, name, cfg, overrides[name])
    world = _join_world(cfg.device)
    with lifecycle(out, _resolved(settings, cfg), environment(), resuming=resuming, writer=world.is_main):
        done = {name: read_model(out / name) for name in names if (out / name / MODEL_SUMMARY).exists()}

        def finished(m):  # each model's outputs appear whole, so a resumed comparison skips it
            with staged_dir(out / m.name) as tmp:
                write_model(tmp, m, cfg)
            done[m.name] = m
            set_status(out, "running", models_done=sorted(done))

        comparison = compare_models(bags, names, cfg, overrides, seeds=_seeds(settings, cfg),
                                    folds=settings.get("folds"), val_fraction=settings.get("val_fraction", 0.2),
                                    world=world, done=dict(done), on_model=finished if world.is_main else None)
        if not world.is_main:
            return
        _publish(out, lambda tmp: write_comparison(tmp, comparison, bags.source))
    print(comparison.description)
    print(comparison.table())
    if comparison.mode != "single":
        print()
        print(comparison.paired_table())
    print(f"comparison written to {out}")


def cmd_cv(args) -> None:
    from arcmil.cv import check_cv_inputs, read_folds, run_cv, write_cv_tables, write_fold
    from arcmil.pipeline import environment
    from arcmil.runstate import lifecycle, set_status

    settings, out, resuming = _resumable(args, lambda s: f"cv_{s.get('model', 'attention_mil')}")
    model = settings.get("model", "attention_mil")
    cfg, overrides = train_config(settings), model_overrides(model, settings, strict=True)
    if _printed_config(args, settings, cfg):
        return
    folds, seeds = settings.get("folds", 10), [cfg.seed + r for r in range(settings.get("repeats", 5))]
    bags = _bags(settings)
    check_cv_inputs(bags, folds)  # bad input fails here, before the output directory exists
    world = _join_world(cfg.device)
    with lifecycle(out, _resolved(settings, cfg), environment(), resuming=resuming, writer=world.is_main):
        done = read_folds(out) if resuming else {}

        def finished(record):  # each fold's JSON appears whole, so a resumed CV skips it
            write_fold(out, record)
            set_status(out, "running", folds_done=len(done) + 1)
            done[(record["repeat"], record["fold"])] = record

        result = run_cv(bags, model, cfg, folds=folds, seeds=seeds, val_fraction=settings.get("val_fraction", 0.2),
                        world=world, done=dict(done), on_fold=finished if world.is_main else None, **overrides)
        if not world.is_main:
            return
        _publish(out, lambda tmp: write_cv_tables(tmp, result, cfg))
    print(f"{result.tag}: {len(seeds)} × {folds}-fold CV, mean ± std over folds")
    print(result.table())
    print(f"cross-validation written to {out}")


def _publish(out: Path, write) -> None:
    """``write(tmp_dir)``, then move each file it made into ``out``: each appears whole (rename)."""
    with tempfile.TemporaryDirectory(prefix=".outputs-", dir=out) as tmp:
        write(Path(tmp))
        for path in Path(tmp).iterdir():
            path.replace(out / path.name)


def _checkpoint_and_bags(args):
    """The checkpoint's model, metadata and normaliser, and the (raw) data; mismatches refused."""
    from arcmil.checkpoint import load_checkpoint
    from arcmil.data import load_bags
    from arcmil.data.prepare import Normalizer
    from arcmil.pipeline import check_fits
    from arcmil.train import select_device

    device = select_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    bags = load_bags(args.data, require_labels=False)
    check_fits(bags, model.config, against=f"the checkpoint {args.checkpoint}")
    return model, meta, bags, Normalizer.from_dict(meta["normalization"]), device


def cmd_predict(args) -> None:
    import pandas as pd

    from arcmil.data import scoring_loader
    from arcmil.metrics import binary_metrics
    from arcmil.pipeline import has_short_bags, predictions_frame, window_weights_frame
    from arcmil.report import write_new_file
    from arcmil.train import evaluate

    out = Path(args.out)
    long_out = out.with_name(f"{out.stem}_window_weights.csv")  # per-window weights of bags too long for columns
    for path in (out, long_out):
        if path.exists() and not args.overwrite:
            raise ArcmilError(f"{path}: already exists; refusing to overwrite (pass --overwrite or choose another "
                              "name)")
    model, meta, bags, normalizer, device = _checkpoint_and_bags(args)
    world = _join_world(args.device)
    loader = scoring_loader(bags, args.batch_size, normalizer, world)
    ev = evaluate(model, loader, device=device, precision=args.precision)
    if not world.is_main:
        return
    frame = predictions_frame(bags, ev, meta["threshold"], split=bags.split, wide=has_short_bags(ev))
    if "w_0" not in frame.columns:
        write_new_file(long_out, lambda tmp: window_weights_frame(bags, ev).to_csv(tmp, index=False),
                       overwrite=args.overwrite)
    write_new_file(out, lambda tmp: frame.to_csv(tmp, index=False), overwrite=args.overwrite)
    print(f"scored {len(bags)} bags with {meta['tag']} at threshold {meta['threshold']:.4f} -> {out}")
    if bags.labels is not None and len(np.unique(bags.labels)) == 2:
        metrics = binary_metrics(bags.labels, ev.probs, meta["threshold"])
        print(pd.Series({k: v for k, v in metrics.items() if not isinstance(v, dict)}).to_string())


def cmd_explain(args) -> None:
    from arcmil.explain import METHODS, explain_bags, write_explanations
    from arcmil.report import markdown_table, staged_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ArcmilError(f"unknown explanation method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    out = _fresh_out({"out": args.out}, "explain")
    model, meta, bags, normalizer, device = _checkpoint_and_bags(args)
    if args.split:
        if bags.split is None:
            raise DataError(bags.source, f"--split {args.split} given but the data has no split", field="split")
        bags = bags.subset(np.flatnonzero(bags.split == args.split))
    frame = explain_bags(model, bags, methods, normalizer=normalizer, steps=args.ig_steps, device=device)
    with staged_dir(out) as tmp:
        scores = write_explanations(tmp, frame, methods, n_plots=args.n_plots, title=meta["tag"])
    print(f"explained {len(bags)} bags ({len(frame)} windows) with {meta['tag']} -> {out}")
    if scores:
        print("instance-localisation ROC-AUC over the windows of positive bags:")
        print(markdown_table([{"method": m, **s} for m, s in scores.items()],
                             ("method", "pooled", "per_bag_mean", "n_bags", "n_windows")))


def cmd_convert(args) -> None:
    from arcmil.data.store import convert_to_store
    from arcmil.report import refuse_existing_dir

    refuse_existing_dir(args.out)
    meta = convert_to_store(args.data, args.out, dtype=args.dtype, chunk_windows=args.chunk_windows)
    n_windows, dim = meta["shape"]
    print(f"stored {meta['n_bags']} bags, {n_windows} windows of {dim}-d as {meta['dtype']} -> {args.out}")


def cmd_demo_data(args) -> None:
    from arcmil.data import save_bags
    from arcmil.demo import make_demo_bags
    from arcmil.report import write_new_file

    bags = make_demo_bags(args.n_bags, seed=args.seed)
    suffix = Path(args.out).suffix  # the temp file keeps the suffix that picks the format
    write_new_file(args.out, lambda tmp: Path(save_bags(bags, tmp + suffix)).replace(tmp), overwrite=args.overwrite)
    print(f"wrote {len(bags)} demo bags ({int(bags.labels.sum())} positive, {bags.dim}-d) to {args.out}")


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "cv": cmd_cv, "predict": cmd_predict,
            "explain": cmd_explain, "convert": cmd_convert, "demo-data": cmd_demo_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from arcmil.distributed import shutdown

    try:
        COMMANDS[args.command](args)
    except ArcmilError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"arcmil: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
