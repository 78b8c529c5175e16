"""`koa`: the project's command line (data, pipeline, Kubeflow compile, server, web UI)."""

from components import features

features.select_keras_2()  # this is a process entry point: before anything loads TensorFlow

# pylint: disable=wrong-import-position
import argparse
import logging
import os
import sys
import warnings
from typing import List, Optional, Sequence

from pipeline import configs

logger = logging.getLogger("koa")


class _TfxProgressFilter(logging.Filter):
    """Keeps TFX's one-line progress messages and drops its multi-line proto dumps."""

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        return "\n" not in message and len(message) < 300


def setup_logging(verbose: bool = False) -> None:
    """Timestamped logs on stderr; TFX's own chatter trimmed unless verbose."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Google client libraries warn about Python 3.10 on import; TFX 1.16 requires it.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
    if not verbose:
        for name in ("absl", "apache_beam", "tensorflow"):
            logging.getLogger(name).addFilter(_TfxProgressFilter())
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _cmd_generate(args) -> int:
    from components import synthetic
    summary = synthetic.generate(args.out, patients=args.patients, size=args.size,
                                 seed=args.seed)
    logger.info("wrote %d SYNTHETIC images (%d patients) to %s, per grade %s",
                summary["images"], summary["patients"], args.out, summary["counts"])
    return 0


def _cmd_ingest(args) -> int:
    from components import ingestion
    from pipeline import params as params_lib
    params = params_lib.load(args.params)
    source = args.source or params.data.source
    manifest = args.manifest if args.manifest is not None else (params.data.manifest or None)
    report = ingestion.ingest(source, args.out, eval_fraction=params.data.eval_fraction,
                              seed=params.data.seed, manifest=manifest,
                              eval_source=(args.eval_source if args.eval_source is not None
                                           else params.data.eval_source) or None)
    logger.info("ingested %d images into %s (excluded %d); counts %s", report.total_images,
                args.out, len(report.excluded), report.counts)
    return 0


def _cmd_run(args) -> int:
    import dataclasses
    from pipeline import local_runner
    from pipeline import params as params_lib
    params = params_lib.load(args.params)
    if args.workers:
        params = dataclasses.replace(params, run=dataclasses.replace(
            params.run, beam_workers=args.workers))
    if args.tune:
        params = dataclasses.replace(params, run=dataclasses.replace(params.run, tune=True))
    record = local_runner.run(params, args.project_dir)
    return 0 if record.pushed or not args.require_push else 3


def _cmd_report(args) -> int:
    from pipeline import report
    from pipeline.run_record import RunRecord
    if not os.path.isfile(args.record):
        raise FileNotFoundError(f"no run record at {args.record}: run `koa run` first")
    report.write_report(RunRecord.read(args.record), args.out)
    return 0


def _cmd_exp_args(args) -> int:
    from pipeline import params as params_lib
    # stdout is the product here: the arguments, for `dvc exp run $(koa exp-args FILE)`.
    sys.stdout.write(" ".join(params_lib.set_args(args.params_file, args.base,
                                                  args.absolute_paths)) + "\n")
    return 0


def _cmd_compile_kfp(args) -> int:
    from pipeline import kubeflow_runner
    from pipeline import params as params_lib
    kubeflow_runner.compile_pipeline(
        params_lib.load(args.params), args.output, image=args.image,
        pipeline_root=args.pipeline_root, examples_dir=args.examples_dir,
        serving_dir=args.serving_dir, beam_args=args.beam_arg)
    return 0


def _cmd_up(args) -> int:
    from koa import stack
    return stack.up(args.project_dir, grpc_port=args.grpc_port, rest_port=args.rest_port,
                    web_port=args.web_port)


def _cmd_grade(args) -> int:
    from koa import grade
    return grade.run(args.inputs, args.out, server=args.server, model_dir=args.model,
                     model_name=args.model_name, batch_size=args.batch_size,
                     timeout=args.timeout)


def _cmd_evaluate(args) -> int:
    from koa import evaluate
    return evaluate.run(args.data, args.out, server=args.server, model_dir=args.model,
                        model_name=args.model_name, root=args.root,
                        batch_size=args.batch_size, timeout=args.timeout)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--server | --model and their options, shared by grade and evaluate."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="HOST:PORT",
                       help="model server gRPC address (default: localhost:8500)")
    where.add_argument("--model", metavar="DIR",
                       help="grade with this SavedModel (a version folder, or a model base "
                            "path: its highest version) in this process; loads TensorFlow")
    p.add_argument("--model-name", default="koa", help="the served model's name (--server)")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="films per model call")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one model server call may take (--server)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koa", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TFX/Beam internals in the logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate-synthetic",
                       help="write the embedded SYNTHETIC knee phantom dataset")
    p.add_argument("--out", default="data")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("ingest", help="import a graded image folder or CSV into TFRecords")
    p.add_argument("--params", default=configs.PARAMS_FILE)
    p.add_argument("--source", help="dataset root (default: params data.source)")
    p.add_argument("--manifest", help="CSV manifest (default: params data.manifest)")
    p.add_argument("--eval-source", help="<grade>/ folder that is the eval split as given "
                                         "(default: params data.eval_source)")
    p.add_argument("--out", default=configs.INGESTED_DIR)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("run", help="run the TFX pipeline locally on the ingested data")
    p.add_argument("--params", default=configs.PARAMS_FILE)
    p.add_argument("--project-dir", default=".")
    p.add_argument("--workers", type=int, help="Beam DirectRunner workers (default: params)")
    p.add_argument("--tune", action="store_true",
                   help="search hyper-parameters with TFX's Tuner before training, as params "
                        "run.tune does (model.tuner_trials / tuner_epochs; docs/model.md)")
    p.add_argument("--require-push", action="store_true",
                   help="exit with status 3 when the model is not blessed and pushed")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="write DVC metrics/plots from the last run")
    p.add_argument("--record", default=configs.RUN_RECORD)
    p.add_argument("--out", default=configs.METRICS_DIR)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("exp-args",
                       help="print the `dvc exp run -S ...` arguments that apply a params file")
    p.add_argument("params_file", help="e.g. params.kneeKL224.yaml")
    p.add_argument("--base", default=configs.PARAMS_FILE,
                   help="the params the experiment starts from (default: params.yaml)")
    p.add_argument("--absolute-paths", action="store_true",
                   help="make relative data/weights paths absolute, for `dvc exp run --queue` "
                        "and `--temp` (they run in a copy of the repository)")
    p.set_defaults(func=_cmd_exp_args)

    p = sub.add_parser("grade", help="grade radiograph files and folders into a CSV")
    p.add_argument("inputs", nargs="+", metavar="FILE|DIR",
                   help="PNG, JPEG or DICOM files, or folders searched recursively")
    p.add_argument("--out", required=True, help="the CSV to write (one row per file)")
    _add_model_arguments(p)
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("evaluate",
                       help="measure the model on a labelled set of your own films")
    p.add_argument("--data", required=True, metavar="DIR|CSV",
                   help="<grade>/ folders (optionally under split folders) or a CSV "
                        "manifest path,grade — the layouts `koa ingest` reads")
    p.add_argument("--root", help="folder the manifest's paths are relative to (default: "
                                  "the manifest's folder)")
    p.add_argument("--out", help="folder for metrics.json, the confusion matrix (CSV, PNG) "
                                 "and predictions.csv (default: build/evaluation)")
    _add_model_arguments(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compile-kfp", help="compile the pipeline for Kubeflow Pipelines v2")
    p.add_argument("--params", default=configs.PARAMS_FILE)
    p.add_argument("--output", default=configs.KFP_OUTPUT)
    p.add_argument("--image", default=configs.KFP_DEFAULT_IMAGE)
    p.add_argument("--pipeline-root", default="gs://koa-pipelines/root")
    p.add_argument("--examples-dir", default="gs://koa-pipelines/ingested")
    p.add_argument("--serving-dir", default="gs://koa-pipelines/serving_model/koa")
    p.add_argument("--beam-arg", action="append", default=[],
                   help="Beam option for the cluster run, repeatable (e.g. --runner=DataflowRunner)")
    p.set_defaults(func=_cmd_compile_kfp)

    p = sub.add_parser("up", help="run the model server and web UI on the pushed models")
    p.add_argument("--project-dir", default=".")
    p.add_argument("--grpc-port", type=int, default=8500)
    p.add_argument("--rest-port", type=int, default=8501)
    p.add_argument("--web-port", type=int, default=5000)
    p.set_defaults(func=_cmd_up)

    # serve and web own their flags (serve mirrors tensorflow_model_server's exactly):
    # everything after the subcommand is theirs, including -h.
    p = sub.add_parser("serve", add_help=False,
                       help="start the model server (tensorflow_model_server flags)")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("web", add_help=False, help="start the clinician web UI")
    p.set_defaults(func=_cmd_web)
    return parser


def _cmd_serve(args) -> int:
    from serving.__main__ import main as serve_main
    return serve_main(args.passed_on)


def _cmd_web(args) -> int:
    from webapp.cli import serve_main
    return serve_main(args.passed_on)


_PASS_ON = ("serve", "web")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `koa` console command."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in _PASS_ON:
        # The subcommand's own parser sees its arguments, in order, even ones that look
        # like ours.
        args.passed_on = argv[argv.index(args.command) + 1:]
        return args.func(args)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except Exception as e:  # the boundary: one clear line instead of a traceback
        if _is_user_error(e):
            logger.error("%s", e)
            return 2
        raise


# Errors that describe bad input or a missing step, by module; a module that was never
# imported cannot have raised its error, so nothing heavy is imported to check.
_USER_ERRORS = (("components.anomaly_gate", "DataAnomalyError"),
                ("components.ingestion", "IngestError"),
                ("components.ingest_sources", "IngestError"),
                ("koa.grade", "GradeError"),
                ("components.synthetic", "SyntheticError"),
                ("koa.processes", "StartError"))


def _is_user_error(error: Exception) -> bool:
    if isinstance(error, (FileNotFoundError, ValueError)):
        return True
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
