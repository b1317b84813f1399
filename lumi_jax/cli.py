"""The `lumi` command: one subcommand per stage of the pipeline.

Each subcommand lives in the module that does its job; that module exposes
`add_arguments(parser)` and `run(args) -> int`, or, for a command with commands of its own
(`lumi session NAME`), `dispatch(argv, prog) -> int`, so `lumi session quick` and
`python -m lumi_jax.session quick` are parsed by the same code. The table below is the whole list,
so `lumi --help` shows every stage, and a module is imported only when its command runs (JAX
start-up is slow, and `lumi --help` should not pay for it). A bad argument is one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lumi_jax.cpu_devices import use_cpu_cores
from lumi_jax.errors import exit_on_user_error
from lumi_jax.flags import ArgumentParser

# name -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "architecture": ("lumi_jax.architecture", "parameter counts, memory estimates and LLaMA checks for model configs"),
    "prepare": ("lumi_jax.data.prepare", "read a text source, train a tokenizer, write data/NAME token files"),
    "data-info": ("lumi_jax.data.info", "sizes, token counts and decoded samples of a prepared dataset"),
    "train": ("lumi_jax.train", "train a model on a prepared dataset into runs/NAME (resumable, time-boxed)"),
    "sft": ("lumi_jax.sft", "fine-tune a pretrained run on instruction data (responses only; optional LoRA)"),
    "generate": ("lumi_jax.generate", "continue prompts with a trained run (KV cache, sampling, streaming, --chat)"),
    "evaluate": ("lumi_jax.evaluate", "validation loss, perplexity, bits per byte, baselines and samples into eval.json/eval.md"),
    "assess": ("lumi_jax.assess", "findings, recommendations and a grade for a run; --compare puts runs side by side"),
    "export": ("lumi_jax.interop.export_command", "a run for Hugging Face transformers (--format hf) or llama2.c "
               "(--format llama2c)"),
    "import": ("lumi_jax.interop.import_command", "a local Hugging Face LLaMA checkpoint (config.json + safetensors) "
               "into runs/NAME"),
    "launch": ("lumi_jax.launch", "run a lumi command as N joined processes on this machine (multi-host, "
               "locally: lumi launch --processes 2 -- train ...)"),
    "session": ("lumi_jax.session", "run a time-boxed session (quick, prototype, experiment, evaluation, "
                "architecture) or a tool; `lumi session --help` lists them"),
    "status": ("lumi_jax.sessions.status", "datasets, runs, the latest session, disk, device, and what to run next"),
    "monitor": ("lumi_jax.sessions.monitor", "live CPU, memory, disk, accelerator memory and lumi processes (--once)"),
    "check-env": ("lumi_jax.sessions.env_check", "Python, packages, devices, memory, disk and permissions (exit 1 if missing)"),
    "cleanup": ("lumi_jax.sessions.cleanup", "remove temporary files and old session logs (--dry-run lists only)"),
    "backup": ("lumi_jax.sessions.backup", "a verified tar.gz of configs, tokenizers, latest checkpoints and reports"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="lumi",
        description="lumi_jax: train tiny LLaMA-style language models from scratch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module_name, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run_command(argv)
    except BrokenPipeError:  # `lumi generate ... | head`: the reader has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def run_command(argv: list[str]) -> int:
    with exit_on_user_error():
        if not argv or argv[0] not in COMMANDS:
            parser = build_parser()
            parser.parse_args(argv)  # prints help, or a one-line "invalid choice" with exit status 2
            parser.print_help()
            return 0
        name, rest = argv[0], argv[1:]
        module_name, help_text = COMMANDS[name]
        if name != "launch":  # launch gives each of its processes their devices itself
            use_cpu_cores()  # before the command's module starts JAX
        module = importlib.import_module(module_name)
        if hasattr(module, "dispatch"):  # `lumi session NAME ...`: the module parses NAME and its options
            return int(module.dispatch(rest, prog=f"lumi {name}") or 0)
        command_parser = ArgumentParser(prog=f"lumi {name}", description=help_text)
        module.add_arguments(command_parser)
        args = command_parser.parse_args(rest)
        return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
