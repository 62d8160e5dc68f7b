"""The `oldphoto` command line: parses arguments and calls flows."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from . import SAMPLES, __version__
from .options import add_options, option_values
from .prefect_api import PrefectAPI, start_early, stop_early
from .settings import configure, get_settings




# Settings each kind of command takes on its command line (all of them also as OLDPHOTO_* variables).
STORAGE_SETTINGS = ("s3_endpoint_url", "dask_address")
MODEL_SETTINGS = (*STORAGE_SETTINGS, "mlflow_tracking_uri")
TRAINING_SETTINGS = ("s3_endpoint_url", "mlflow_tracking_uri", "device")


def _add_settings(parser: argparse.ArgumentParser, names: tuple[str, ...], workers: bool = True) -> None:
    from .settings import Settings

    add_options(parser, Settings, "settings (also OLDPHOTO_* environment variables)", only=names)
    if workers:
        parser.add_argument("--workers", type=int, help="local Dask worker processes")


def _settings_from(args: argparse.Namespace, **overrides):
    from .settings import Settings

    return configure(**option_values(args, Settings) | overrides)


def synth(args: argparse.Namespace) -> int:
    with PrefectAPI() as api:  # a temporary one starting beside the command's own start-up (start_early)
        from .flows.runner import task_runner
        from .flows.synth import synthesize
        from .storage import absolute
        from .tasks.synth import SynthConfig

        settings = _settings_from(args)
        config = SynthConfig(**option_values(args, SynthConfig))
        runner = task_runner(args.workers, settings.dask_address, preload=("oldphoto.tasks.synth",))
        api.ready()
        summary = synthesize.with_options(task_runner=runner)(absolute(args.src), absolute(args.dst), config)
    print(json.dumps(summary, indent=2))
    return 0


def _model_workers(args: argparse.Namespace, config_type):
    """(local workers, settings, config) of a command that runs a model on Dask workers. One local
    worker by default, with all cores for torch's threads: the model is loaded once, and reading and
    writing overlap inside the worker. More workers split the cores between them."""
    from .runtime import usable_cores

    local = not (args.dask_address or get_settings().dask_address)
    workers = (args.workers or 1) if local else args.workers
    settings = _settings_from(args, torch_threads=max(1, usable_cores() // workers) if local else None)
    config = config_type(**{"device": settings.device} | option_values(args, config_type))
    return workers, settings, config


def restore(args: argparse.Namespace) -> int:
    with PrefectAPI() as api:  # a temporary one starting beside the command's own start-up (start_early)
        from .flows.restore import restore_archive, up_to_date
        from .flows.runner import task_runner
        from .storage import absolute
        from .tasks.restore import RestoreConfig, load_ahead

        workers, settings, config = _model_workers(args, RestoreConfig)
        src, dst = absolute(args.src), absolute(args.dst)
        summary = up_to_date(src, dst, config)
        if summary is not None:
            print(f"oldphoto restore: all {summary['images']} images under {src} unchanged since restored with "
                  f"model {summary['model_version']}: nothing to do, no flow run", file=sys.stderr)
        else:
            if workers == 1 and not settings.dask_address:
                load_ahead(config)  # the tasks run in this process: the model loads while the temporary API starts
            runner = task_runner(workers, settings.dask_address, preload=("oldphoto.tasks.restore", "oldphoto.model.engine"))
            api.ready()
            summary = restore_archive.with_options(task_runner=runner)(src, dst, config)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


def evaluate(args: argparse.Namespace) -> int:
    with PrefectAPI() as api:
        from .flows.evaluate import evaluate as evaluate_flow
        from .flows.runner import task_runner
        from .storage import absolute
        from .tasks.evaluate import EvaluateConfig

        clean = None if args.pairs else (args.clean or str(SAMPLES))
        workers, settings, config = _model_workers(args, EvaluateConfig)
        runner = task_runner(workers, settings.dask_address, preload=("oldphoto.tasks.evaluate", "oldphoto.model.engine"))
        api.ready()
        result = evaluate_flow.with_options(task_runner=runner)(
            absolute(args.pairs) if args.pairs else None, absolute(clean) if clean else None, config,
            absolute(args.out) if args.out else None, absolute(args.real) if args.real else None)
    print(result["table"])
    print(f"\nresults: {result['out']}\nMLflow run: {result['mlflow_run_id']} ({settings.tracking_uri})")
    return 0


def sheet(args: argparse.Namespace) -> int:
    import cv2

    from .images import decode_rgb
    from .pairs import read_pairs
    from .sheets import contact_sheet
    from .storage import join, list_images, read_bytes

    _settings_from(args)
    real = [(key, decode_rgb(read_bytes(join(args.real, key)), key)) for key in list_images(args.real)] if args.real else []
    image = contact_sheet(read_pairs(args.pairs, limit=args.count), real)
    cv2.imwrite(args.out, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    print(args.out)
    return 0


def _model_config(args: argparse.Namespace):
    from .model.config import ModelConfig

    config = ModelConfig.load(args.config)
    if args.steps:
        config.train.steps = args.steps
    return config


def _stages(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def train(args: argparse.Namespace) -> int:
    with PrefectAPI() as api:
        from .flows.train import train as train_flow
        from .storage import absolute

        _settings_from(args)
        api.ready()
        result = train_flow(absolute(args.pairs), absolute(args.real) if args.real else None, _model_config(args),
                            _stages(args.stages), absolute(args.checkpoints) if args.checkpoints else None, args.model_name,
                            init=args.init)
    print(json.dumps(result, indent=2))
    return 0


def train_stage(args: argparse.Namespace) -> int:
    """One stage without Prefect or MLflow: what torchrun launches for DistributedDataParallel."""
    from .storage import absolute
    from .tasks.train import run_stage

    _settings_from(args)
    result = run_stage(args.stage, _model_config(args), absolute(args.pairs), absolute(args.real) if args.real else None,
                       absolute(args.checkpoints), init=args.init)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is saved and the process group destroyed, yet the C++ threads of gloo and of
        # torchrun's store can still abort the interpreter's teardown ("terminate called without an
        # active exception", now and then): leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The training flow's own parameters (the networks and their training are the --config's)."""
    p.add_argument("--config", default="default", help="preset (default, light, paper, tiny) or a JSON ModelConfig file")
    p.add_argument("--pairs", required=True, help="folder or URL of synthesized shards")
    p.add_argument("--real", help="folder or URL of real old photographs (needed by vae_a)")
    p.add_argument("--steps", type=int, help="steps per stage (default: the config's)")
    p.add_argument("--init", help="restorer (path, URL, MLflow URI) standing in for the stages the checkpoint folder "
                                  "lacks: refine fine-tunes it, tone corrects it, distill learns from it")
    _add_settings(p, TRAINING_SETTINGS, workers=False)


def retrain(args: argparse.Namespace) -> int:
    with PrefectAPI() as api:
        from .flows.retrain import retrain as retrain_round
        from .flows.runner import task_runner
        from .tasks.retrain import RetrainConfig

        settings = _settings_from(args)
        config = RetrainConfig(**option_values(args, RetrainConfig))
        runner = task_runner(args.workers, settings.dask_address, preload=("oldphoto.tasks.evaluate", "oldphoto.model.engine"))
        api.ready()
        summary = retrain_round.with_options(task_runner=runner)(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def review(args: argparse.Namespace) -> int:
    from .review import ReviewConfig, serve
    from .storage import absolute

    _settings_from(args)
    serve(absolute(args.dst), ReviewConfig(**option_values(args, ReviewConfig)), verbose=args.verbose)
    return 0


def stack(args: argparse.Namespace) -> int:
    from . import stack as local_stack

    config = local_stack.StackConfig(**{"home": get_settings().home / "stack"} | option_values(args, local_stack.StackConfig))
    if args.action == "up":
        try:
            local_stack.up(config)
        except RuntimeError as error:
            print(f"oldphoto stack up: error: {error}", file=sys.stderr)
            return 1
        print("\nPrefect UI      " + config.prefect_api.removesuffix("/api") +
              "\nMLflow UI       " + config.mlflow_uri + "\nDask dashboard  " + config.dask_dashboard + "/status" +
              "\n\nPoint oldphoto and prefect at it:\n" + "\n".join(f"export {k}={v}" for k, v in config.env().items()))
    elif args.action == "status":
        states = local_stack.status(config)
        for name, state in states.items():
            print(f"{name:16} {state}")
        return 0 if all(state == "healthy" for state in states.values()) else 1
    else:
        local_stack.down(config)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The commands; their options come from the configs they fill (oldphoto/options.py). command:
    only that one gets its options (the others are listed): each config's module is imported only
    when its command runs, so that `oldphoto review` does not wait for torch, say."""
    parser = argparse.ArgumentParser(prog="oldphoto", description="Restore old photographs at archive scale.")
    parser.add_argument("--version", action="version", version=f"oldphoto {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the INFO logs of Prefect, Dask and the other libraries on the console too")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (text, options) in COMMANDS.items():
        p = commands.add_parser(name, help=text)
        if command in (None, name):
            options(p)
    return parser


def _synth_options(p: argparse.ArgumentParser) -> None:
    from .tasks.synth import SynthConfig

    p.add_argument("src", help="folder, file or URL (s3://bucket/prefix) of clean photographs")
    p.add_argument("dst", help="folder or URL for the shards and manifest.json")
    add_options(p, SynthConfig, "synthesis")
    _add_settings(p, STORAGE_SETTINGS)
    p.set_defaults(run=synth)


def _restore_options(p: argparse.ArgumentParser) -> None:
    from .tasks.restore import RestoreConfig

    p.add_argument("src", help="folder, single file or URL (s3://bucket/prefix) of scans; never modified")
    p.add_argument("dst", help="folder or URL: DST/<same relative path>, DST/_manifest/, DST/_report/index.html")
    add_options(p, RestoreConfig, "restoration")
    _add_settings(p, MODEL_SETTINGS)
    p.set_defaults(run=restore)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    from .tasks.evaluate import EvaluateConfig

    data = p.add_mutually_exclusive_group()
    data.add_argument("--pairs", help="folder or URL of synthesized pairs to score on")
    data.add_argument("--clean", help="clean photographs to synthesize a held-out set from (default: the photographs "
                      "the package ships; the model card's figures use BSDS500 test)")
    p.add_argument("--real", help="folder or URL of real old photographs for a before/after sheet")
    p.add_argument("--out", help="folder or URL for the results (default: under OLDPHOTO_HOME/evaluations)")
    add_options(p, EvaluateConfig, "evaluation")
    _add_settings(p, MODEL_SETTINGS)
    p.set_defaults(run=evaluate)


def _sheet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("pairs", help="folder or URL of synthesized shards")
    p.add_argument("out", help="PNG file to write")
    p.add_argument("--real", help="folder or URL of real old photographs to show beside them")
    p.add_argument("--count", type=int, default=18, help="number of samples")
    _add_settings(p, STORAGE_SETTINGS, workers=False)
    p.set_defaults(run=sheet)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .model.stages import DEFAULT, STAGES

    _add_training_arguments(p)
    p.add_argument("--stages", default=",".join(DEFAULT), help="comma-separated stages to train (default: %(default)s): "
                   + "; ".join(f"{name}: {stage.doc}" for name, stage in STAGES.items()))
    p.add_argument("--checkpoints", help="folder or URL for checkpoints (default: one per config and data under OLDPHOTO_HOME)")
    p.add_argument("--model-name", default="oldphoto-restorer", help="registered model name in MLflow")
    p.set_defaults(run=train)


def _train_stage_options(p: argparse.ArgumentParser) -> None:
    from .model.stages import ORDER

    p.add_argument("stage", choices=ORDER)
    _add_training_arguments(p)
    p.add_argument("--checkpoints", required=True, help="folder or URL for the stage's checkpoint")
    p.set_defaults(run=train_stage)


def _retrain_options(p: argparse.ArgumentParser) -> None:
    from .tasks.retrain import RetrainConfig

    add_options(p, RetrainConfig, "retraining")
    _add_settings(p, MODEL_SETTINGS)
    p.set_defaults(run=retrain)


def _review_options(p: argparse.ArgumentParser) -> None:
    from .review import ReviewConfig

    p.add_argument("dst", help="folder or URL of a restored archive (with its _manifest)")
    add_options(p, ReviewConfig, "review")
    _add_settings(p, ("s3_endpoint_url",), workers=False)
    p.set_defaults(run=review)


def _stack_options(p: argparse.ArgumentParser) -> None:
    from .stack import StackConfig

    p.add_argument("action", choices=["up", "status", "down"])
    add_options(p, StackConfig, "stack", exclude=("timeout",))
    p.set_defaults(run=stack)


COMMANDS = {
    "synth": ("degrade clean photographs into Parquet shards of training pairs", _synth_options),
    "restore": ("restore every photo under SRC into DST, with a manifest and a report", _restore_options),
    "evaluate": ("score a restorer and the classical baselines on held-out pairs", _evaluate_options),
    "sheet": ("contact sheet of synthetic pairs beside real old photographs", _sheet_options),
    "train": ("train the stages, tracked in MLflow, and register the restorer", _train_options),
    "train-stage": ("one stage, no tracking: for torchrun and DistributedDataParallel", _train_stage_options),
    "retrain": ("one round of champion and challenger on the material that arrived since the last round (the "
                "retrain deployment runs it weekly)", _retrain_options),
    "review": ("a web page to accept, reject or send back each restoration under DST", _review_options),
    "stack": ("the local monitoring stack: Prefect server and worker, MLflow, Dask", _stack_options),
}
FLOW_COMMANDS = ("synth", "restore", "evaluate", "train", "retrain")  # those that run a Prefect flow


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler, a container stopping) exits 143 through Python's cleanup, as
    Ctrl-C does, so the temporary Prefect API and the local Dask cluster a command started stop with
    it. Without this, Python's default action killed a restore at once and left both running as
    orphans.

    During a flow run Prefect swaps in its own SIGTERM handler, which raises `TerminationSignal`
    wherever the main thread happens to be; inside a serializer that surfaces as some other error
    (seen: a PydanticSerializationError). A wakeup pipe records every signal whichever Python
    handler takes it, so any failure after a SIGTERM still exits 143. Outside the main thread
    signals cannot be handled: nothing then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)

    def terminated() -> bool:
        try:
            return signal.SIGTERM in os.read(read, 4096)
        except BlockingIOError:
            return False

    previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except Exception as error:
        if terminated():
            raise SystemExit(128 + signal.SIGTERM) from error
        raise
    else:
        if terminated():
            raise SystemExit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(read)
        os.close(write)


QUIET = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING", "DASK_LOGGING__DISTRIBUTED": "warning"}


class _RetriesShown(logging.Filter):
    """Prefect announces a task run's retry at INFO, which the quiet console hides: raised to WARNING,
    so that a training stage starting again from its checkpoint, or a batch sent again, says why."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and str(record.msg).startswith("Task run failed with") and "Retry" in str(record.msg):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


RETRIES_SHOWN = _RetriesShown()


@contextmanager
def quiet_console(argv: Sequence[str]) -> Iterator[None]:
    """Unless -v, while a command runs flows: the libraries' INFO lines (Prefect's task runs, Dask's
    connections) stay off the console, in this process and the workers it starts, which take this
    environment; they still reach the Prefect API. Set before Prefect or Dask is imported, which is
    when they read it; a user's own setting of either wins. A task's retry is still shown (where it
    runs in this process). `stack` is left alone: its services keep their INFO logs in their log files."""
    command = next((a for a in argv if not a.startswith("-")), None)
    quiet = command in ("synth", "restore", "evaluate", "train", "train-stage", "retrain") and not {"-v", "--verbose"} & set(argv)
    added = {k: v for k, v in QUIET.items() if k not in os.environ} if quiet else {}
    os.environ.update(added)
    retries = logging.getLogger("prefect.task_runs")  # Prefect's logging set-up keeps a logger's filters
    if quiet:
        retries.addFilter(RETRIES_SHOWN)
    try:
        yield
    finally:
        retries.removeFilter(RETRIES_SHOWN)
        for name in added:
            os.environ.pop(name, None)


def main(argv: Sequence[str] | None = None) -> int:
    command_line = argv is None  # the `oldphoto` command itself, not a caller in Python
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), "")
    if command_line:
        _leave_without_teardown()
    try:
        with quiet_console(argv), exit_on_sigterm():  # from before the temporary API's server starts
            if command_line and command in FLOW_COMMANDS and not {"-h", "--help"} & set(argv):
                start_early()
            args = build_parser(command).parse_args(argv)
            try:
                return _status(args.run(args))
            except (FileNotFoundError, FileExistsError, ValueError) as error:
                print(f"oldphoto {args.command}: error: {_reason(error)}", file=sys.stderr)
                return _status(2)
    except SystemExit as stop:  # --help, a usage error, SIGTERM: their codes, as Python would exit with
        _status(stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1)
        raise
    except KeyboardInterrupt:
        _status(128 + signal.SIGINT)
        raise
    finally:
        stop_early()  # if the command did not take it over


_exit_status = 1  # what the process exits with if main does not return (an uncaught exception)


def _status(code: int) -> int:
    global _exit_status
    _exit_status = code
    return code


def _leave_without_teardown() -> None:
    """Once every other exit handler has run (Prefect's flush of logs and events among them: handlers
    run last registered first), leave at once: tearing down the interpreter with torch, Prefect and
    their threads loaded took 0.8 s of a one-photo restore. Registered first, so it runs last."""
    import atexit

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)

    atexit.register(leave)


def _reason(error: Exception) -> str:
    """A config's validation error as one line per field ("crop: Input should be ..."), not pydantic's page."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or e['type']}: {e['msg']}" for e in error.errors())
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
