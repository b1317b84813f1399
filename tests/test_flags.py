"""The command-line vocabulary: every TrainConfig field is a flag, and both session commands agree."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from lumi_jax import flags
from lumi_jax.config import REPO_ROOT, TrainConfig
from lumi_jax.errors import exit_on_user_error
from lumi_jax.session import check_timed_options, session_parser

FIELDS = [field.name for field in dataclasses.fields(TrainConfig)]


def train_parser(exclude=frozenset()) -> flags.ArgumentParser:
    parser = flags.ArgumentParser(prog="lumi train")
    flags.add_train_flags(parser, exclude=exclude)
    return parser


def config_from(argv: list[str], base: dict | None = None) -> TrainConfig:
    """What `lumi train` does with its flags: parse, override the base, validate; errors exit 2."""
    with exit_on_user_error():
        args = train_parser().parse_args(argv)
        return flags.train_config_from_flags(args, TrainConfig().to_dict() if base is None else base)


# ---------------------------------------------------------------------------------------------
# one flag per field


def test_every_field_has_a_flag_with_its_help():
    options = train_parser()._option_string_actions
    for field in dataclasses.fields(TrainConfig):
        action = options[flags.flag_name(field.name)]
        assert action.dest == field.name
        assert field.metadata["help"] and action.help == field.metadata["help"]
    assert options["--time-budget"].dest == "time_budget_minutes" and options["--keep"].dest == "keep_checkpoints"
    assert "--mesh" in options


def test_no_flag_given_changes_nothing():
    base = {**TrainConfig().to_dict(), "steps": 50, "warmup": 5, "remat": "full", "context": 64}
    assert config_from([], base).to_dict() == base


def test_flags_override_the_base_and_keep_todays_spellings():
    base = {**TrainConfig().to_dict(), "steps": 50, "warmup": 5, "remat": "full", "description": "a recipe"}
    config = config_from(["--steps", "200", "--lr", "3e-3", "--batch-size", "16", "--grad-accum", "4",
                          "--context", "64", "--time-budget", "2.5", "--keep", "5", "--dtype", "bf16",
                          "--remat", "dots", "--tensorboard", "--mesh", "data=2,fsdp=2", "--beta2", "0.99",
                          "--grad-clip", "0", "--eval-batches", "3"], base)
    assert (config.steps, config.lr, config.batch_size, config.grad_accum, config.context) == (200, 3e-3, 16, 4, 64)
    assert (config.time_budget_minutes, config.keep_checkpoints, config.dtype) == (2.5, 5, "bfloat16")
    assert (config.remat, config.tensorboard, config.mesh_data, config.mesh_fsdp) == ("dots", True, 2, 2)
    assert (config.beta2, config.grad_clip, config.eval_batches) == (0.99, 0.0, 3)
    assert (config.warmup, config.description) == (5, "a recipe")  # not given: the base's
    long_names = config_from(["--time-budget-minutes", "2.5", "--keep-checkpoints", "5", "--dtype", "float32",
                              "--mesh-fsdp", "2"])
    assert (long_names.time_budget_minutes, long_names.keep_checkpoints, long_names.dtype) == (2.5, 5, "float32")
    assert (long_names.mesh_data, long_names.mesh_fsdp) == (0, 2)
    assert config_from(["--mesh", "fsdp=4"]).mesh_data == 0  # a missing axis: all the devices fsdp leaves


def test_mesh_spec_parsing():
    assert flags.parse_mesh_spec("data=4") == (4, 1)
    assert flags.parse_mesh_spec("data=2,fsdp=2") == (2, 2)
    assert flags.parse_mesh_spec("fsdp=4") == (0, 4)  # data 0: all the devices fsdp leaves
    assert flags.parse_mesh_spec(" data=1 , fsdp=8 ") == (1, 8)
    for bad, words in (("data=two", "expected data=N,fsdp=M"), ("pipeline=2", "expected data=N,fsdp=M"),
                       ("fsdp=0", "fsdp must be at least 1")):
        with pytest.raises(flags.UserError, match=words):
            flags.parse_mesh_spec(bad)


def test_excluded_fields_have_no_flag_and_keep_the_base():
    parser = train_parser(exclude={"copy_warmup_steps"})
    assert "--copy-warmup-steps" not in parser._option_string_actions
    base = {**TrainConfig().to_dict(), "copy_warmup_steps": 30}
    assert flags.train_config_from_flags(parser.parse_args(["--steps", "400"]), base).copy_warmup_steps == 30
    with pytest.raises(ValueError, match="no TrainConfig field named colour"):
        train_parser(exclude={"colour"})


@pytest.mark.parametrize(("command", "without"), [("train", set()), ("sft", {"copy_warmup_steps"})])
def test_lumi_train_and_sft_have_every_field_flag(capsys, command, without):
    from lumi_jax import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", printed))
    assert {flags.flag_name(name) for name in FIELDS if name not in without} <= listed
    assert {flags.flag_name(name) for name in without}.isdisjoint(listed)
    assert {"--time-budget", "--keep", "--mesh", "--dtype"} <= listed


# ---------------------------------------------------------------------------------------------
# bad values: one line, exit status 2


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--steps", "abc"], "argument --steps: 'abc' is not a whole number"),
    (["--steps", "1.5"], "'1.5' is not a whole number"),
    (["--lr", "abc"], "argument --lr: 'abc' is not a number"),
    (["--lr", "nan"], "'nan' is not a finite number"),
    (["--lr", "inf"], "'inf' is not a finite number"),
    (["--time-budget=-inf"], "'-inf' is not a finite number"),
    (["--context", "many"], "'many' is not a whole number"),
    (["--dtype", "fp16"], "'fp16' is not a compute dtype"),
    (["--mesh", "pipeline=2"], "expected data=N,fsdp=M"),
    (["--steps", "-1"], "'steps' is -1; use a positive integer"),
    (["--batch-size", "0"], "'batch_size' is 0; use a positive integer"),
    (["--lr", "-1"], "'lr' is -1.0"),
    (["--time-budget", "0"], "'time_budget_minutes' is 0.0"),
    (["--warmup", "-1"], "'warmup' is -1; use zero or a positive integer"),
    (["--mesh", "data=2", "--mesh-fsdp", "2"], "not both"),
    (["--stepz", "3"], "unrecognized arguments: --stepz 3"),
])
def test_bad_values_exit_2_with_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        config_from(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert fragment in err, err


# ---------------------------------------------------------------------------------------------
# sessions: one parser for `lumi session` and `python -m lumi_jax.session`


def help_of(*command: str) -> str:
    environment = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=environment, check=True)
    return result.stdout


def test_both_session_commands_print_the_same_options():
    via_lumi = help_of("lumi_jax.cli", "session", "quick", "--help")
    via_module = help_of("lumi_jax.session", "quick", "--help")
    options = re.compile(r"--[a-z][a-z-]*")
    assert options.findall(via_lumi) == options.findall(via_module)
    assert {"--time", "--model", "--config", "--run", "--data", "--seed", "--steps"} <= set(options.findall(via_lumi))
    same = " ".join(via_lumi.replace("lumi session", "PROG").split())
    assert same == " ".join(via_module.replace("python -m lumi_jax.session", "PROG").split())
    overview = help_of("lumi_jax.cli", "session", "--help")
    assert all(name in overview for name in ("quick", "prototype", "experiment", "evaluation", "architecture"))


def test_lumi_session_refuses_an_unknown_session_in_one_line():
    result = subprocess.run([sys.executable, "-m", "lumi_jax.cli", "session", "nonsense"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "unknown session 'nonsense'" in result.stderr


def test_the_evaluation_session_reads_a_run_given_with_run(tmp_path):
    args = session_parser("evaluation").parse_args(["--run", str(tmp_path)])
    assert args.run == tmp_path and args.config is None
    check_timed_options("evaluation", args)  # accepted: an existing directory
    quick = session_parser("quick", prog="lumi session").parse_args(["--run", str(tmp_path)])
    with pytest.raises(flags.UserError, match="--run applies to the evaluation session"):
        check_timed_options("quick", quick)
    for spelling in ("--model", "--config"):  # one meaning: a model config
        assert session_parser("quick").parse_args([spelling, "micro"]).config == "micro"


def test_make_passes_model_path_as_run():
    result = subprocess.run(["make", "-n", "session-evaluation", "MODEL_PATH=runs/x"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True)
    assert "-m lumi_jax.session evaluation" in result.stdout and " --run 'runs/x'" in result.stdout


@pytest.mark.parametrize("argv", [
    ["train", "--data", "d", "--out", "o", "--steps", "abc"],
    ["sft", "--from", "r", "--data", "d", "--out", "o", "--lr", "nan"],
])
def test_lumi_train_and_sft_refuse_bad_numbers_before_anything(tmp_path, monkeypatch, capsys, argv):
    from lumi_jax import cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: lumi {argv[0]}: argument --") and "\n" not in err
    assert list(tmp_path.iterdir()) == []
