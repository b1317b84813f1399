"""The command-line vocabulary: training flags made from TrainConfig, and one-line argument errors.

Every TrainConfig field is a flag, as llama2.c's configurator makes every config key one:
`batch_size` is `--batch-size`, its type comes from the annotation and its help from the field's
metadata (config.py). A flag that is given overrides the recipe (or the stored run); a flag left
out changes nothing, so each flag defaults to None. A few flags keep shorter spellings users
already type:

    --time-budget MINUTES   time_budget_minutes      --keep N              keep_checkpoints
    --mesh data=N,fsdp=M    mesh_data and mesh_fsdp  --dtype bf16|fp32     dtype (or bfloat16|float32)

The words mean one thing in every command: `--model` is a model config, `--run` a run to read,
`--out` a directory to write, `--from` the run to fine-tune.

A bad value ("abc", nan, inf) is refused by the flag's type in one line with exit status 2; a
value of the right type that makes no sense (a negative batch) is refused by TrainConfig.validate.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable

from lumi_jax.config import COMPUTE_DTYPES, REMAT_POLICIES, TrainConfig, train_config_from_dict
from lumi_jax.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is a UserError: one line, exit status 2, no usage dump."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}; see --help")


# ---------------------------------------------------------------------------------------------
# Value types: each returns the value or raises ArgumentTypeError with a one-line reason.


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def positive_whole_number(text: str) -> int:
    value = whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def non_negative_whole_number(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use zero or a positive number")
    return value


def positive_number(text: str) -> float:
    value = finite_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be positive")
    return value


DTYPE_NAMES = {"bf16": "bfloat16", "fp32": "float32", **{name: name for name in COMPUTE_DTYPES}}


def compute_dtype(text: str) -> str:
    """`bf16` → `bfloat16`, `fp32` → `float32`; the long names pass through."""
    if text not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"'{text}' is not a compute dtype; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[text]


def mesh_spec(text: str) -> tuple[int, int]:
    """`data=4,fsdp=2` → (4, 2); a missing axis is 0 for data (all the rest) and 1 for fsdp."""
    sizes = {"data": 0, "fsdp": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in sizes or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"'{text}': expected data=N,fsdp=M with whole numbers; e.g. --mesh data=2,fsdp=2")
        sizes[name] = int(value)
    if sizes["fsdp"] < 1:
        raise argparse.ArgumentTypeError(f"'{text}': fsdp must be at least 1; e.g. --mesh fsdp=2")
    return sizes["data"], sizes["fsdp"]


def parse_mesh_spec(text: str) -> tuple[int, int]:
    """mesh_spec outside argparse: a bad spec is a UserError."""
    try:
        return mesh_spec(text)
    except argparse.ArgumentTypeError as error:
        raise UserError(f"--mesh {error}") from None


# ---------------------------------------------------------------------------------------------
# Training flags, one per TrainConfig field.

ALIASES: dict[str, tuple[str, ...]] = {  # field -> the spelling users type, listed first in --help
    "time_budget_minutes": ("--time-budget",),
    "keep_checkpoints": ("--keep",),
}
METAVARS = {"time_budget_minutes": "MINUTES", "dtype": "{bf16,fp32}"}
VALUE_TYPES = {int: (whole_number, "N"), float: (finite_number, "X"), str: (str, "TEXT")}


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _value_type(annotation) -> type:
    """`int`, `float | None` → int, float: the type a flag's text becomes."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def add_train_flags(parser: argparse.ArgumentParser, exclude: Iterable[str] = frozenset()) -> None:
    """One flag per TrainConfig field (less `exclude`), each storing under the field's own name."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = set(exclude) - set(fields)
    if unknown:
        raise ValueError(f"add_train_flags: no TrainConfig field named {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training settings (each overrides the recipe, or the run being continued)")
    for name, field in fields.items():
        if name in exclude:
            continue
        names = [*ALIASES.get(name, ()), flag_name(name)]
        help_text = field.metadata["help"].replace("%", "%%")
        kind = _value_type(hints[name])
        if kind is bool:
            group.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif name == "dtype":
            group.add_argument(*names, dest=name, type=compute_dtype, metavar=METAVARS[name], help=help_text)
        elif name == "remat":
            group.add_argument(*names, dest=name, choices=REMAT_POLICIES, help=help_text)
        else:
            value_type, metavar = VALUE_TYPES[kind]
            group.add_argument(*names, dest=name, type=value_type, metavar=METAVARS.get(name, metavar),
                               help=help_text)
    if not {"mesh_data", "mesh_fsdp"} & set(exclude):
        group.add_argument("--mesh", type=mesh_spec, metavar="data=N,fsdp=M",
                           help="the device mesh in one flag, e.g. data=4 or fsdp=2 or data=2,fsdp=2 "
                           "(default: all devices on data)")


def short_run_warmup(values: dict, args: argparse.Namespace, note=print) -> None:
    """`--steps N` without `--warmup`: the warmup is at most a tenth of the steps asked for.

    The default warmup (100) is longer than a 40-step run, which would then be refused; a user who
    asks for a short run gets one, told in one line. An explicit --warmup is always kept."""
    steps = getattr(args, "steps", None)
    if steps is None or getattr(args, "warmup", None) is not None or not isinstance(values.get("warmup"), int):
        return
    scaled = min(values["warmup"], max(steps, 0) // 10)
    if scaled != values["warmup"]:
        note(f"warmup {values['warmup']} -> {scaled} steps (a tenth of --steps {steps}); give --warmup N to choose it")
        values["warmup"] = scaled


def train_config_from_flags(args: argparse.Namespace, base: dict, source: str = "command line", *,
                            scale_warmup: bool = False) -> TrainConfig:
    """`base` (a recipe's or a stored run's settings) overridden by the flags given, then validated.
    `scale_warmup`: a new run's warmup shrinks to fit a short --steps (short_run_warmup); not for a
    run being continued, whose warmup is part of what it is."""
    values = dict(base)
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)  # None: not given (or not a flag of this command)
        if value is not None:
            values[field.name] = value
    if scale_warmup:
        short_run_warmup(values, args)
    mesh = getattr(args, "mesh", None)
    if mesh is not None:
        if getattr(args, "mesh_data", None) is not None or getattr(args, "mesh_fsdp", None) is not None:
            raise UserError("--mesh sets both mesh axes; give either --mesh or --mesh-data/--mesh-fsdp, not both")
        values["mesh_data"], values["mesh_fsdp"] = mesh
    return train_config_from_dict(values, source)
