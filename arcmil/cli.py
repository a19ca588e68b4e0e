"""Command line: ``arcmil train | compare | cv | predict | explain | convert | demo-data``; thin over the library."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from arcmil import __version__
from arcmil.errors import ArcmilError, DataError
from arcmil.models import model_names
from arcmil.settings import CHOICES, DEFAULT_MODELS, DEFAULTS, MODEL_FIELDS, RUN_KEYS, TRAIN_FIELDS, read_yaml
from arcmil.tracking import TRACKERS


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


def _add_run_flags(parser: argparse.ArgumentParser, resume_help: str) -> None:
    parser.add_argument("--resume", metavar="RUN_DIR", help=resume_help)
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    parser.add_argument("--tracker", choices=TRACKERS,
                        help="log config, metrics and plots (extras arcmil[tensorboard|wandb|mlflow])")
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
    _add_run_flags(train, "continue an interrupted run from its last finished epoch")

    compare = commands.add_parser("compare", help="train several models through the identical pipeline")
    compare.add_argument("--models", help=f"comma-separated model names (default {','.join(DEFAULT_MODELS)})")
    compare.add_argument("--seeds", help="comma-separated seeds: mean ± std and paired tests over them")
    compare.add_argument("--folds", type=int, help="repeated stratified k-fold CV (one repeat per seed)")
    compare.add_argument("--val-fraction", type=float, help="validation share of each training fold (0.2)")
    _add_run_flags(compare, "finish an interrupted comparison (done models are kept)")

    cv = commands.add_parser("cv", help="repeated stratified k-fold cross-validation of one model")
    cv.add_argument("--model", choices=model_names(), help="registered model (default attention_mil)")
    cv.add_argument("--folds", type=int, help="number of folds (default 10)")
    cv.add_argument("--repeats", type=int, help="repeats with seeds seed, seed+1, … (default 5)")
    cv.add_argument("--val-fraction", type=float, help="validation share of each training fold (0.2)")
    _add_run_flags(cv, "finish an interrupted cross-validation (done folds are kept)")

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


def _open_run(args, command: str):
    """The interrupted run (``--resume``) or a new one from ``--config`` and the flags given (flags win)."""
    from arcmil.run import Run

    if args.resume:
        return Run.resume(command, args.resume)
    settings = read_yaml(args.config) if args.config else {}
    settings.update({k: getattr(args, k) for k in (*RUN_KEYS, *TRAIN_FIELDS, *MODEL_FIELDS)
                     if getattr(args, k, None) is not None})
    return Run.new(command, settings)


def cmd_train(args) -> None:
    from arcmil.compare import SINGLE_COLUMNS
    from arcmil.pipeline import check_inputs, run_experiment
    from arcmil.report import markdown_table, results_row, write_run
    from arcmil.runstate import RESUME_FILE, save_resume

    run = _open_run(args, "train")
    if args.print_config:
        return print(run.config.to_yaml(), end="")
    config, bags = run.config, run.load_bags()
    check_inputs(bags, config.model, config.train, config.overrides(config.model))  # before any output exists
    with run.started():
        def on_epoch(state):
            save_resume(run.out, state)
            run.progress(epoch=state["epoch"])
            run.log_epoch(state["epoch"], state["history"][-1])

        result = run_experiment(bags, config.model, config.train, run.world, resume=run.resume_state(),
                                on_epoch=on_epoch if run.writes else None, **config.overrides(config.model))
        if not run.writes:  # every rank holds the same result; rank 0 writes it
            return
        run.publish(lambda tmp: write_run(tmp, result),
                    {"validation": result.results["validation"], "test": result.results["test"],
                     "threshold": result.threshold})
    (run.out / RESUME_FILE).unlink(missing_ok=True)
    print(markdown_table([results_row(result.results)], SINGLE_COLUMNS))
    print(f"run written to {run.out}")


def cmd_compare(args) -> None:
    from arcmil.compare import MODEL_SUMMARY, compare_models, read_model, write_comparison, write_model
    from arcmil.pipeline import check_inputs
    from arcmil.report import staged_dir

    run = _open_run(args, "compare")
    if args.print_config:
        return print(run.config.to_yaml(), end="")
    config, bags = run.config, run.load_bags()
    for name in config.models:  # bad input fails here, before the output directory exists
        check_inputs(bags, name, config.train, config.overrides(name), folds=config.folds)
    with run.started():
        done = {name: read_model(run.out / name) for name in config.models
                if (run.out / name / MODEL_SUMMARY).exists()}

        def finished(m):  # each model's outputs appear whole, so a resumed comparison skips it
            with staged_dir(run.out / m.name) as tmp:
                write_model(tmp, m, config.train)
            done[m.name] = m
            run.progress(models_done=sorted(done))

        comparison = compare_models(bags, list(config.models), config.train,
                                    {name: config.overrides(name) for name in config.models},
                                    seeds=list(config.seeds), folds=config.folds, val_fraction=config.val_fraction,
                                    world=run.world, done=dict(done), on_model=finished if run.writes else None)
        if not run.writes:
            return
        run.publish(lambda tmp: write_comparison(tmp, comparison, bags.source),
                    {row["model"]: row for row in comparison.summary_rows()})
    print(comparison.description)
    print(comparison.table())
    if comparison.mode != "single":
        print()
        print(comparison.paired_table())
    print(f"comparison written to {run.out}")


def cmd_cv(args) -> None:
    from arcmil.cv import read_folds, run_cv, write_cv_tables, write_fold
    from arcmil.pipeline import check_inputs

    run = _open_run(args, "cv")
    if args.print_config:
        return print(run.config.to_yaml(), end="")
    config, bags = run.config, run.load_bags()
    check_inputs(bags, config.model, config.train, config.overrides(config.model), folds=config.folds)
    with run.started():
        done = read_folds(run.out) if run.resuming else {}

        def finished(record):  # each fold's JSON appears whole, so a resumed CV skips it
            write_fold(run.out, record)
            done[(record["repeat"], record["fold"])] = record
            run.progress(folds_done=len(done))

        result = run_cv(bags, config.model, config.train, folds=config.folds, seeds=list(config.seeds),
                        val_fraction=config.val_fraction, world=run.world, done=dict(done),
                        on_fold=finished if run.writes else None, **config.overrides(config.model))
        if not run.writes:
            return
        run.publish(lambda tmp: write_cv_tables(tmp, result, config.train), result.summary)
    print(f"{result.tag}: {len(config.seeds)} × {config.folds}-fold CV, mean ± std over folds")
    print(result.table())
    print(f"cross-validation written to {run.out}")


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
    from arcmil.distributed import init_world
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
    world = init_world(device)
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
    from arcmil.report import markdown_table, refuse_existing_dir, staged_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ArcmilError(f"unknown explanation method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    out = refuse_existing_dir(args.out)
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
