"""Sessions: `lumi session NAME [options]`, `python -m lumi_jax.session NAME` (and `make session-NAME`).

A session runs one focused, time-boxed piece of work end to end: quick, prototype, experiment,
evaluation and architecture run their steps under a budget and leave a log and a record in
sessions/ (see sessions/runner.py). debug, status, monitor, check-env, cleanup and backup are
tools: they do their job and leave nothing behind but what they are asked to make.

    python -m lumi_jax.session quick                       # the 5-minute end-to-end check
    python -m lumi_jax.session prototype --time 60         # SESSION_TIME=60 make session-prototype
    python -m lumi_jax.session evaluation --run runs/x     # MODEL_PATH=runs/x make session-evaluation

Both commands build their parsers here (`session_parser`) and run through `dispatch`, so they take
the same options. The words mean what they mean in `lumi train`: `--model` (or `--config`) is a
model config, `--run` a run directory to read.

Every mistake in the arguments (a budget that is not a number, an unknown session, a MODEL_PATH
that does not exist) is refused before anything starts, in one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from lumi_jax.cpu_devices import use_cpu_cores
from lumi_jax.errors import UserError, exit_on_user_error
from lumi_jax.flags import (
    ArgumentParser,
    non_negative_whole_number,
    positive_number,
    positive_whole_number,
)

PROG = "python -m lumi_jax.session"


@dataclass(frozen=True)
class TimedSession:
    minutes: float  # the default budget; SESSION_TIME / --time overrides it
    summary: str
    leaves: str  # what it leaves behind, for --help and the README


TIMED_SESSIONS: dict[str, TimedSession] = {
    "quick": TimedSession(
        30, "check the environment, prepare a small sample dataset, check that training is reproducible, "
        "train the micro model until its loss falls clearly, evaluate it (< 5 min on 2 CPU cores)",
        "data/sample-v512-2mb-seed0/, runs/quick-STAMP/"),
    "prototype": TimedSession(
        120, "prepare the sample corpus (or DATA), train the ~6M tiny model (300 copy warm-up steps, then 1000 "
        "steps), evaluate it with curves and samples, check its architecture",
        "data/sample-v4096-seed0/ (or one for DATA), runs/prototype-STAMP/ with eval.md and curves.png"),
    "experiment": TimedSession(
        240, "pretrain the ~42M small model within its share of the budget, fine-tune it on instructions, "
        "evaluate both (held-out exact match before and after)",
        "data/ for the text and the instructions, runs/experiment-STAMP/ and runs/experiment-STAMP-sft/"),
    "evaluation": TimedSession(
        60, "evaluate the latest run (or MODEL_PATH) in full, assess it with recommendations, compare it "
        "with earlier runs", "eval.json, eval.md, assess.json and assess.md in the run directory"),
    "architecture": TimedSession(
        30, "validate every model config, estimate memory against this device, compare with reference "
        "models, suggest changes", "a session log and record"),
}

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int.
TOOLS: dict[str, tuple[str, str]] = {
    "debug": ("lumi_jax.sessions.debug", "an interactive menu: diagnostics, smoke test, monitor, disk, cleanup, errors"),
    "status": ("lumi_jax.sessions.status", "datasets, runs, the latest session, disk, device, and what to run next"),
    "monitor": ("lumi_jax.sessions.monitor", "a live table of CPU, memory, disk, accelerator and lumi processes"),
    "check-env": ("lumi_jax.sessions.env_check", "Python, packages, devices, memory, disk and permissions"),
    "cleanup": ("lumi_jax.sessions.cleanup", "remove temporary files and old session logs (--dry-run to list)"),
    "backup": ("lumi_jax.sessions.backup", "a verified tar.gz of configs, tokenizers, latest checkpoints, reports"),
}

MAX_MINUTES = 7 * 24 * 60


def parse_minutes(text: str) -> float:
    """SESSION_TIME / --time: a positive number of minutes."""
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a number of minutes (SESSION_TIME / --time); use e.g. SESSION_TIME=60") from None
    if not 0 < minutes <= MAX_MINUTES:
        raise argparse.ArgumentTypeError(
            f"{text} minutes is not a usable budget (SESSION_TIME / --time); use a number between 0 and {MAX_MINUTES}")
    return minutes


def add_timed_arguments(parser: argparse.ArgumentParser, session: TimedSession) -> None:
    parser.add_argument("--time", type=parse_minutes, default=session.minutes, metavar="MINUTES",
                        help=f"the session budget in minutes (default {session.minutes:g}; Make: SESSION_TIME)")
    parser.add_argument("--model", "--config", dest="config", metavar="CONFIG",
                        help="the model config to train (a name such as tiny, or a JSON path), or for the "
                        "architecture session the configs to validate (Make: CONFIG)")
    parser.add_argument("--run", metavar="PATH", type=Path,
                        help="the run directory to evaluate (default: the latest run; Make: MODEL_PATH)")
    parser.add_argument("--data", metavar="SOURCE",
                        help="the text to train on: sample, a file, a directory, a .jsonl or tfds:NAME "
                        "(default: the sample corpus; Make: DATA)")
    parser.add_argument("--seed", type=non_negative_whole_number, default=0,
                        help="seed for data, initialisation and order")
    parser.add_argument("--steps", type=positive_whole_number,
                        help="training steps (default: the session's recipe); lower it to scale a session down")
    parser.add_argument("--data-mb", type=positive_number, metavar="MB",
                        help="size of the generated sample corpus in MB (default: the session's)")
    parser.add_argument("--processes", type=positive_whole_number, default=1,
                        help="quick session: train as this many joined processes on this machine (lumi launch), "
                        "the multi-host path; the other steps stay in one process (Make: PROCESSES)")


def build_parser(prog: str = PROG) -> ArgumentParser:
    """The overview `--help` shows: every session and tool, one line each."""
    lines = ["sessions (time-boxed; each leaves sessions/STAMP.log and .json):"]
    for name, session in TIMED_SESSIONS.items():
        text = f"{session.summary}; leaves {session.leaves}"
        lines.append(textwrap.fill(text, width=100, initial_indent=f"  {name:<13} {session.minutes:>4g} min  ",
                                   subsequent_indent=" " * 26))
    lines.append("tools:")
    for name, (_module, help_text) in TOOLS.items():
        lines.append(f"  {name:<13} {help_text}")
    lines.append(f"Run `{prog} NAME --help` for a session's options.")
    parser = ArgumentParser(prog=prog, description="lumi_jax sessions.",
                            epilog="\n".join(lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", help="the session or tool to run")
    return parser


def session_parser(name: str, prog: str = PROG) -> ArgumentParser:
    """The parser of one session or tool; `lumi session` and `python -m lumi_jax.session` both use it."""
    if name in TIMED_SESSIONS:
        parser = ArgumentParser(prog=f"{prog} {name}", description=TIMED_SESSIONS[name].summary)
        add_timed_arguments(parser, TIMED_SESSIONS[name])
        return parser
    if name in TOOLS:
        module_name, help_text = TOOLS[name]
        parser = ArgumentParser(prog=f"{prog} {name}", description=help_text)
        importlib.import_module(module_name).add_arguments(parser)
        return parser
    raise UserError(f"unknown session '{name}'; choose one of: {', '.join([*TIMED_SESSIONS, *TOOLS])}")


def check_timed_options(name: str, args: argparse.Namespace) -> None:
    """Refuse bad values before the session starts, so nothing is created for a typo."""
    if args.run is not None:
        if not args.run.exists():
            raise UserError(f"MODEL_PATH / --run {args.run}: no such run directory; "
                            "give a directory under runs/ (see `make session-status`), or leave it unset for the latest run")
        if not args.run.is_dir():
            raise UserError(f"MODEL_PATH / --run {args.run}: is a file, not a run directory; give the run's directory")
        if name not in ("evaluation",):
            raise UserError(f"MODEL_PATH / --run applies to the evaluation session, not '{name}'; leave it unset")
    if args.data is not None:
        from lumi_jax.data.catalog import named_sources

        if args.data not in named_sources() and not args.data.startswith("tfds:"):
            if not glob.glob(str(Path(args.data).expanduser())):
                raise UserError(f"DATA / --data {args.data}: no such file, directory or source; give a path, "
                                f"tfds:NAME, or one of: {', '.join(named_sources())}")
        if name in ("evaluation", "architecture"):
            raise UserError(f"DATA / --data applies to training sessions, not '{name}'; leave it unset")
    if args.processes > 1:
        if name != "quick":
            raise UserError(f"PROCESSES / --processes applies to the quick session, not '{name}'; leave it unset")
        if args.data and not args.data.startswith("sample") and not args.config and args.steps is None:
            raise UserError("PROCESSES / --processes needs a named model (CONFIG / --model): the auto recipe "
                            "sizes itself for one process")
    if args.config is not None:
        if name == "evaluation":
            raise UserError(f"CONFIG / --model {args.config}: the evaluation session reads a run, not a model "
                            "config; give the run with --run (Make: MODEL_PATH), or leave it unset for the latest run")
        if name == "architecture":
            from lumi_jax.sessions.config_review import config_files

            config_files(args.config)  # exists; each file is validated, and reported, by the session
        else:
            from lumi_jax.config import load_model_config

            load_model_config(args.config)  # a bad config is refused here, with its field and fix


def run_timed(name: str, args: argparse.Namespace, command: list[str]) -> int:
    check_timed_options(name, args)
    from lumi_jax.sessions import plans
    from lumi_jax.sessions.runner import SessionRunner

    arguments = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    steps = plans.build(name, args)
    runner = SessionRunner(name, args.time * 60, arguments, seed=args.seed, command=command)
    return runner.run(steps)


def dispatch(argv: list[str], prog: str = PROG) -> int:
    """Run `NAME [options]`: the overview for no NAME or --help, else that session's or tool's parser and run."""
    if not argv or argv[0] in ("-h", "--help"):
        build_parser(prog).print_help()
        return 0
    name, rest = argv[0], argv[1:]
    args = session_parser(name, prog).parse_args(rest)
    if name in TOOLS:
        return int(importlib.import_module(TOOLS[name][0]).run(args) or 0)
    return run_timed(name, args, command=[*prog.split(), name, *rest])


def main(argv: list[str] | None = None) -> int:
    with exit_on_user_error():
        use_cpu_cores()  # before anything starts JAX (python -m lumi_jax.session; `lumi session` did it already)
        return dispatch(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
