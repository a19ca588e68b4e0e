"""Command line: ``arcmil train | compare | cv | predict | explain | convert | demo-data``; thin over the library."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from arcmil import __version__
from arcmil.config import SCORE_BATCH_SIZE
from arcmil.errors import ArcmilError, ConfigError
from arcmil.models.registry import model_names
from arcmil.settings import (
    CHOICES,
    DEFAULT_MODELS,
    DEFAULTS,
    EVAL_FIELDS,
    IG_STEPS,
    MODEL_FIELDS,
    N_PLOTS,
    RUN_KEYS,
    TRAIN_FIELDS,
)
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
    _add_setting_flags(parser, EVAL_FIELDS, "evaluation")
    _add_setting_flags(parser, MODEL_FIELDS, "model hyper-parameters")


def _add_search_flags(parser: argparse.ArgumentParser, trials_flag: str) -> None:
    group = parser.add_argument_group("hyper-parameter search (extra arcmil[tune])")
    if trials_flag == "--trials":
        group.add_argument("--trials", type=int, help="finished trials the study ends with (default 50)")
    else:
        group.add_argument("--tune", dest="trials", type=int, metavar="N",
                           help="tune each model with N trials on training data only before it is trained")
    group.add_argument("--timeout", type=float, help="stop a search after this many seconds")
    group.add_argument("--inner-folds", type=int, help="score trials by inner k-fold CV of the training bags "
                                                       "(default: the validation split)")
    group.add_argument("--storage", help="Optuna storage URL shared by several processes or machines "
                                         "(default: sqlite study.db in the output directory)")
    group.add_argument("--space", help="YAML overriding the search space (name: {low, high[, log]} or "
                                       "{choices}; null: do not search)")


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
    _add_search_flags(compare, "--tune")
    _add_run_flags(compare, "finish an interrupted comparison (done models are kept)")

    cv = commands.add_parser("cv", help="repeated stratified k-fold cross-validation of one model")
    cv.add_argument("--model", choices=model_names(), help="registered model (default attention_mil)")
    cv.add_argument("--folds", type=int, help="number of folds (default 10)")
    cv.add_argument("--repeats", type=int, help="repeats with seeds seed, seed+1, … (default 5)")
    cv.add_argument("--val-fraction", type=float, help="validation share of each training fold (0.2)")
    _add_search_flags(cv, "--tune")
    _add_run_flags(cv, "finish an interrupted cross-validation (done folds are kept)")

    tune = commands.add_parser("tune", help="search a model's hyper-parameters, then train the best configuration")
    tune.add_argument("--model", choices=model_names(), help="registered model (default attention_mil)")
    tune.add_argument("--val-fraction", type=float, help="validation share of each inner training fold (0.2)")
    _add_search_flags(tune, "--trials")
    _add_run_flags(tune, "continue an interrupted search (finished trials are kept)")

    predict = commands.add_parser("predict", help="score bags with a trained checkpoint")
    predict.add_argument("--checkpoint", required=True, help="best_<model>.pth, or its ONNX export (.onnx)")
    predict.add_argument("--data", required=True)
    predict.add_argument("--out", required=True, help="predictions CSV to write")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    predict.add_argument("--batch-size", type=int, default=SCORE_BATCH_SIZE)
    predict.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 …")
    predict.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")

    explain = commands.add_parser("explain", help="per-window importance by three methods")
    explain.add_argument("--checkpoint", required=True)
    explain.add_argument("--data", required=True)
    explain.add_argument("--out", required=True, help="new directory for importances.csv and heatmaps")
    explain.add_argument("--methods", default="weights,occlusion,integrated_gradients")
    explain.add_argument("--ig-steps", type=int, default=IG_STEPS, help="integrated-gradient path steps")
    explain.add_argument("--n-plots", type=int, default=N_PLOTS, help="bags shown in each heatmap")
    explain.add_argument("--split", choices=("train", "val", "test"), help="explain only this split's bags")
    explain.add_argument("--classes", help="multi-class / multi-label models: comma-separated classes to explain "
                         "(default: each bag's most probable class; every label)")
    explain.add_argument("--device", default="auto")

    report = commands.add_parser("report", help="rebuild report.html of a finished train, compare or cv directory")
    report.add_argument("directory")

    export = commands.add_parser("export", help="write a checkpoint as an ONNX graph (extra arcmil[onnx])")
    export.add_argument("--checkpoint", required=True, help="a run's best_<model>.pth")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

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
    demo.add_argument("--classes", type=int, help="K-class documents (none, then order, witness and pair "
                      "evidence in turn) instead of the binary demo; with --multi-label, the number of labels")
    demo.add_argument("--multi-label", action="store_true", help="documents tagged with any subset of the labels "
                      "(default 5)")
    demo.add_argument("--overwrite", action="store_true")
    return parser


def _open_run(args, command: str):
    """The interrupted run (``--resume``; the settings given must be those it recorded) or a new one from
    ``--config`` and the flags given (flags win); None after ``--print-config`` has printed its settings."""
    from arcmil.run import Run
    from arcmil.settings import read_yaml

    settings = read_yaml(args.config) if args.config else {}
    settings.update({k: getattr(args, k) for k in (*RUN_KEYS, *TRAIN_FIELDS, *EVAL_FIELDS, *MODEL_FIELDS)
                     if getattr(args, k, None) is not None})
    run = Run.resume(command, args.resume, settings) if args.resume else Run.new(command, settings)
    if args.print_config:
        return print(run.config.to_yaml(), end="")
    return run


def cmd_train(args) -> None:
    from arcmil.pipeline import run_experiment
    from arcmil.report import SINGLE_COLUMNS, markdown_table, reported, results_row, write_run
    from arcmil.runstate import RESUME_FILE, save_resume

    run = _open_run(args, "train")
    if run is None:
        return
    config, bags = run.config, run.load_bags()
    with run.started():
        def on_epoch(state):
            if "member" in state:  # an ensemble's member: nothing to resume from; one step count for all members
                member, row = state["member"], state["history"][-1]
                run.progress(member=member, epoch=state["epoch"])
                run.log_epoch(member * config.train.epochs + state["epoch"],
                              {f"member{member}/{key}": value for key, value in row.items()})
                return
            save_resume(run.out, state)
            run.progress(epoch=state["epoch"])
            run.log_epoch(state["epoch"], state["history"][-1])

        result = run_experiment(bags, config.model, config.train, run.world, evaluation=config.evaluation,
                                resume=run.resume_state(), on_epoch=on_epoch if run.writes else None,
                                **config.overrides(config.model))
        if not run.writes:  # every rank holds the same result; rank 0 writes it
            return
        run.publish(lambda tmp: write_run(tmp, result),
                    {"validation": result.validation, "test": result.test,
                     "threshold": result.threshold})
    (run.out / RESUME_FILE).unlink(missing_ok=True)
    row = results_row(result)
    print(markdown_table([row], reported(SINGLE_COLUMNS, row)))
    print(f"run written to {run.out}")


def cmd_compare(args) -> None:
    from arcmil.compare import MODEL_SUMMARY, compare_models, compared, read_model, write_comparison, write_model
    from arcmil.outputs import staged_dir

    run = _open_run(args, "compare")
    if run is None:
        return
    config, bags = run.config, run.load_bags()
    with run.started():
        done = {entry: read_model(run.out / entry) for entry, _, _ in compared(list(config.models), config.train)
                if (run.out / entry / MODEL_SUMMARY).exists()}

        def finished(m):  # each model's outputs appear whole, so a resumed comparison skips it
            with staged_dir(run.out / m.name) as tmp:
                write_model(tmp, m)
            done[m.name] = m
            run.progress(models_done=sorted(done))

        comparison = compare_models(bags, list(config.models), config.train,
                                    {name: config.overrides(name) for name in config.models},
                                    evaluation=config.evaluation,
                                    seeds=list(config.seeds), folds=config.folds, val_fraction=config.val_fraction,
                                    world=run.world, done=dict(done), on_model=finished if run.writes else None,
                                    search=config.search, storage=run.study_storage,
                                    resuming=run.owns_running_trials)
        if not run.writes:
            return
        run.publish(lambda tmp: write_comparison(tmp, comparison, bags.source),
                    {row["model"]: row for row in comparison.summary_rows()})
    print(comparison.report())
    print(f"comparison written to {run.out}")


def cmd_cv(args) -> None:
    from arcmil.cv import read_folds, run_cv, write_cv_tables, write_fold

    run = _open_run(args, "cv")
    if run is None:
        return
    config, bags = run.config, run.load_bags()
    with run.started():
        done = read_folds(run.out) if run.resuming else {}

        def finished(record):  # each fold's JSON appears whole, so a resumed CV skips it
            write_fold(run.out, record)
            done[(record["repeat"], record["fold"])] = record
            run.progress(folds_done=len(done))

        result = run_cv(bags, config.model, config.train, evaluation=config.evaluation, folds=config.folds,
                        seeds=list(config.seeds), val_fraction=config.val_fraction, world=run.world, done=dict(done),
                        on_fold=finished if run.writes else None, search=config.search, storage=run.study_storage,
                        resuming=run.owns_running_trials, **config.overrides(config.model))
        if not run.writes:
            return
        run.publish(lambda tmp: write_cv_tables(tmp, result), result.summary)
    print(f"{result.tag}: {len(config.seeds)} × {config.folds}-fold CV, mean ± std over folds")
    print(result.table())
    if config.search:
        print(f"\nnested CV: each fold's configuration, searched on its training part ({config.search.trials} trials)")
        print(result.search_table())
    print(f"cross-validation written to {run.out}")


def cmd_tune(args) -> None:
    from arcmil.tune import tune_to_dir

    run = _open_run(args, "tune")
    if run is None:
        return
    bags = run.load_bags()
    with run.started():
        print(tune_to_dir(run, bags))


def cmd_predict(args) -> None:
    from arcmil.predict import predict_to_csv

    summary = predict_to_csv(args.checkpoint, args.data, args.out, batch_size=args.batch_size, device=args.device,
                             precision=args.precision, overwrite=args.overwrite)
    if summary:
        print(summary)


def cmd_explain(args) -> None:
    from arcmil.explain import explain_to_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    print(explain_to_dir(args.checkpoint, args.data, args.out, methods, steps=args.ig_steps, n_plots=args.n_plots,
                         split=args.split, device=args.device, classes=classes))


def cmd_report(args) -> None:
    from arcmil.html_report import write_report

    print(f"report written to {write_report(args.directory)}")


def cmd_export(args) -> None:
    from arcmil.export import export_onnx

    out = export_onnx(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {out} (inputs embeddings (B, N, D), mask (B, N); outputs probability, "
          "logit, weights)")


def cmd_convert(args) -> None:
    from arcmil.data.store import convert_to_store
    from arcmil.outputs import refuse_existing_dir

    refuse_existing_dir(args.out)
    meta = convert_to_store(args.data, args.out, dtype=args.dtype, chunk_windows=args.chunk_windows)
    n_windows, dim = meta["shape"]
    print(f"stored {meta['n_bags']} bags, {n_windows} windows of {dim}-d as {meta['dtype']} -> {args.out}")


def cmd_demo_data(args) -> None:
    from arcmil.data import save_bags
    from arcmil.demo import make_demo_bags
    from arcmil.outputs import write_new_file
    from arcmil.tasks import make_multiclass_task, make_multilabel_task

    if args.classes is not None and args.classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {args.classes}")
    if args.multi_label:
        bags = make_multilabel_task(args.classes or 5, n_bags=args.n_bags, seed=args.seed)
    elif args.classes:
        bags = make_multiclass_task(args.classes, n_bags=args.n_bags, seed=args.seed)
    else:
        bags = make_demo_bags(args.n_bags, seed=args.seed)
    suffix = Path(args.out).suffix  # the temp file keeps the suffix that picks the format
    write_new_file(args.out, lambda tmp: Path(save_bags(bags, tmp + suffix)).replace(tmp), overwrite=args.overwrite)
    space, counts = bags.label_space, bags.label_space.class_counts(bags.labels)
    kind = {"binary": "demo", "multiclass": "multi-class", "multilabel": "multi-label"}[space.kind]
    counted = f"{counts[1]} positive" if space.binary else ", ".join(f"{c} {n}" for c, n in zip(space.classes, counts))
    print(f"wrote {len(bags)} {kind} bags ({counted}, {bags.dim}-d) to {args.out}")


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "cv": cmd_cv, "tune": cmd_tune, "predict": cmd_predict,
            "explain": cmd_explain, "export": cmd_export, "report": cmd_report, "convert": cmd_convert,
            "demo-data": cmd_demo_data}


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
