"""Settings as dataclasses, loaded from JSON with strict validation.

Every config file is checked field by field: an unknown key, a wrong type or an absurd value
raises a `UserError` that names the file, the field and the fix. `dataclass_from_dict` does the
generic part (keys and types) for any settings dataclass; each dataclass's `validate` does the
checks that need several fields at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

from lumi_jax.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
ARCHITECTURES_DIR = CONFIG_DIR / "architectures"

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shape of a LLaMA-style model. Sizes count honestly: see architecture.py."""

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    max_seq_len: int  # the context length the model is trained for
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads (plain MHA)
    hidden_dim: int | None = None  # SwiGLU width; None means LLaMA's 8/3·d rounded up to multiple_of
    multiple_of: int = 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype; parameters are always float32
    description: str = ""
    published_params: int | None = None  # for reference shapes: the count their authors publish

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        return llama_hidden_dim(self.d_model, self.multiple_of)

    def validate(self, source: str) -> None:
        def fail(field: str, problem: str, fix: str) -> None:
            raise UserError(f"{source}: field '{field}' {problem}; {fix}")

        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            if getattr(self, field) <= 0:
                fail(field, f"is {getattr(self, field)}", "use a positive integer")
        for field in ("n_kv_heads", "hidden_dim", "published_params"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                fail(field, f"is {value}", "use a positive integer or leave it out")
        if self.d_model % self.n_heads:
            fail("n_heads", f"({self.n_heads}) does not divide d_model ({self.d_model})",
                 "choose n_heads so that d_model / n_heads is a whole head size")
        if self.head_dim % 2:
            fail("n_heads", f"gives an odd head size ({self.head_dim})",
                 "RoPE rotates pairs of dimensions: make d_model / n_heads even")
        if self.n_heads % self.kv_heads:
            fail("n_kv_heads", f"({self.kv_heads}) does not divide n_heads ({self.n_heads})",
                 "use a divisor of n_heads (n_heads itself for plain multi-head attention)")
        if self.rope_theta <= 0:
            fail("rope_theta", f"is {self.rope_theta}", "use a positive base such as 10000")
        if not 0 < self.norm_eps < 1:
            fail("norm_eps", f"is {self.norm_eps}", "use a small positive value such as 1e-5")
        if self.dtype not in COMPUTE_DTYPES:
            fail("dtype", f"is '{self.dtype}'", f"use one of {', '.join(COMPUTE_DTYPES)}")
        if self.vocab_size < 4:
            fail("vocab_size", f"is {self.vocab_size}", "the tokenizer needs at least unk, bos, eos and one piece")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def llama_hidden_dim(d_model: int, multiple_of: int) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·d (so the MLP costs what a 4·d GELU MLP does), rounded up."""
    hidden = int(2 * (4 * d_model) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# ---------------------------------------------------------------------------------------------
# Generic loading: keys and types, for any settings dataclass.


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation in names:
        return names[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    return str(annotation)


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation)


def dataclass_from_dict(cls: type, data: Any, source: str, ignore: tuple[str, ...] = ()) -> Any:
    """Build `cls` from a JSON object, refusing unknown keys, missing keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object of settings; found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - set(ignore))
    if unknown:
        raise UserError(
            f"{source}: unknown field '{unknown[0]}'; remove it or use one of: {', '.join(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            no_default = (field.default is dataclasses.MISSING
                          and field.default_factory is dataclasses.MISSING)
            if no_default:
                raise UserError(f"{source}: missing required field '{name}'; add it ({_type_name(hints[name])})")
            continue
        value = data[name]
        if not _matches(value, hints[name]):
            raise UserError(
                f"{source}: field '{name}' is {json.dumps(value)}; it must be {_type_name(hints[name])}"
            )
        if hints[name] is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing or malformed file into a clear UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a JSON file; give the file's path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not UTF-8 text; give a JSON config file") from None
    except PermissionError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); check its permissions") from None
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}: invalid JSON at line {error.lineno} column {error.colno} ({error.msg}); fix the syntax"
        ) from None


def model_config_from_dict(data: Any, source: str) -> ModelConfig:
    config = dataclass_from_dict(ModelConfig, data, source)
    config.validate(source)
    return config


def resolve_named_json(name_or_path: str | Path, directory: Path, kind: str) -> Path:
    """A bare name means DIRECTORY/NAME.json (e.g. `tiny`, `quick`); anything else is a path."""
    text = str(name_or_path)
    candidate = directory / f"{text}.json"
    if "/" not in text and not text.endswith(".json") and candidate.exists():
        return candidate
    path = Path(text)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.json")))
        raise UserError(f"{text}: no such {kind}; give a path or one of: {known}")
    return path


def resolve_model_path(name_or_path: str | Path) -> Path:
    """`tiny` means config/architectures/tiny.json; anything else is a path."""
    return resolve_named_json(name_or_path, ARCHITECTURES_DIR, "model config")


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    path = resolve_model_path(name_or_path)
    return model_config_from_dict(read_json(path), str(path))


def is_model_config(data: Any) -> bool:
    """A JSON object that looks like a model config (used to skip recipes and other JSON)."""
    return isinstance(data, dict) and {"d_model", "n_layers", "vocab_size"} <= set(data)


def config_hash(data: Any) -> str:
    """A short, stable hash of a JSON-able config, for records and mismatch checks."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Training settings (a recipe in config/recipes/*.json is a TrainConfig; CLI flags override it).

RECIPES_DIR = CONFIG_DIR / "recipes"
SCHEDULES = ("auto", "cosine", "wsd")


REMAT_POLICIES = ("off", "full", "dots")


def setting(default: Any, help: str) -> Any:
    """A TrainConfig field with its help text; `lumi train --help` shows the text (flags.py)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: the schedule, the batch, the optimiser, and when to save, evaluate and stop.

    Every field is a flag of `lumi train` and `lumi sft` (`batch_size` is `--batch-size`), with
    its help text here; a recipe in config/recipes/*.json sets any of them, and flags override it.
    """

    # --- schedule ---
    steps: int = setting(1000, "optimizer updates (each sees batch_size sequences)")
    lr: float = setting(1e-3, "peak learning rate, reached at the end of warmup")
    warmup: int = setting(100, "linear warmup steps from 0 to lr")
    min_lr: float = setting(1e-4, "learning-rate floor, reached at the last step")
    schedule: str = setting("auto", "the learning rate after warmup: cosine (decays to min_lr at `steps`), wsd "
                                    "(constant, then a linear decay to min_lr over the last decay_fraction of the "
                                    "run; with a time budget the run is sized to end its decay at the deadline), "
                                    "or auto (wsd when there is a time budget, cosine otherwise)")
    decay_fraction: float = setting(0.2, "wsd: the share of the run's steps spent decaying to min_lr")
    copy_warmup_steps: int = setting(0, "a fresh run first trains this many steps on synthetic copying, so "
                                        "attention learns to read back (copy_warmup.py); 0 skips it")
    recall_share: float = setting(0.0, "the share of the copy warm-up's rows that are key-value recall instead of "
                                       "copying: each value stands before its key, and the key asks for it "
                                       "(copy_warmup.py); 0 to 1, 0 copies only")

    # --- batch ---
    batch_size: int = setting(8, "global batch: sequences per update, over all devices and hosts")
    grad_accum: int = setting(1, "split each batch into this many micro-batches and sum their gradients "
                                 "(same result, less memory)")
    context: int | None = setting(None, "tokens per sequence (default: the model's max_seq_len)")

    # --- optimizer ---
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay, on matrices only (not norms)")
    beta1: float = setting(0.9, "AdamW first-moment decay")
    beta2: float = setting(0.95, "AdamW second-moment decay")
    grad_clip: float = setting(1.0, "global-norm gradient clipping threshold; 0 disables it")

    # --- run control ---
    seed: int = setting(0, "seed for parameter initialisation and data order")
    time_budget_minutes: float | None = setting(None, "stop cleanly and save after this much wall time")
    save_every: int = setting(200, "checkpoint interval in steps (also saved at the end and on signals)")
    keep_checkpoints: int = setting(3, "the last N checkpoints are kept")
    eval_every: int = setting(200, "validation interval in steps (also at the end); 0 disables validation")
    eval_batches: int = setting(8, "validation batches per evaluation")
    log_every: int = setting(10, "metrics.jsonl and progress interval in steps")
    description: str = setting("", "a note on what these settings are for (recipes say what they do)")

    # --- system ---
    dtype: str = setting("float32", "compute dtype, float32 or bfloat16 (bf16, fp32); parameters stay float32")
    remat: str = setting("off", "recompute activations in the backward pass: off; full (keep each block's input, "
                                "recompute the rest: least memory, ~1/3 more compute); dots (keep the matmul outputs, "
                                "recompute the cheap rest: a middle way)")
    mesh_data: int = setting(0, "devices on the data axis; 0 means all devices not used by fsdp")
    mesh_fsdp: int = setting(1, "devices that shard parameters and optimizer state (FSDP)")
    tensorboard: bool = setting(False, "also write TensorBoard event files (needs tensorboardX)")

    def validate(self, source: str) -> None:
        def fail(field: str, problem: str, fix: str) -> None:
            raise UserError(f"{source}: '{field}' {problem}; {fix}")

        for field in ("steps", "batch_size", "grad_accum", "save_every", "keep_checkpoints",
                      "log_every", "eval_batches", "mesh_fsdp"):
            if getattr(self, field) <= 0:
                fail(field, f"is {getattr(self, field)}", "use a positive integer")
        for field in ("warmup", "copy_warmup_steps", "eval_every", "mesh_data", "seed"):
            if getattr(self, field) < 0:
                fail(field, f"is {getattr(self, field)}", "use zero or a positive integer")
        if self.context is not None and self.context <= 1:
            fail("context", f"is {self.context}", "use at least 2 tokens, or null for the model's max_seq_len")
        if self.batch_size % self.grad_accum:
            fail("grad_accum", f"({self.grad_accum}) does not divide batch_size ({self.batch_size})",
                 "choose a divisor of the batch size")
        if self.warmup >= self.steps:
            fail("warmup", f"({self.warmup}) is not shorter than steps ({self.steps})",
                 "use fewer warmup steps than training steps")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"is '{self.schedule}'", f"use one of {', '.join(SCHEDULES)}")
        if not 0 <= self.recall_share <= 1:
            fail("recall_share", f"is {self.recall_share}", "use a share between 0 and 1 (0: copying only)")
        if not 0 < self.decay_fraction <= 1:
            fail("decay_fraction", f"is {self.decay_fraction}", "use a share in (0, 1], typically 0.2")
        if not (0 < self.lr and math.isfinite(self.lr)):
            fail("lr", f"is {self.lr}", "use a positive learning rate, typically 1e-4 to 3e-3")
        if not 0 <= self.min_lr <= self.lr:
            fail("min_lr", f"is {self.min_lr}", f"use a floor between 0 and lr ({self.lr})")
        if not 0 <= self.weight_decay < 1:
            fail("weight_decay", f"is {self.weight_decay}", "use a value in [0, 1), typically 0.1")
        for field in ("beta1", "beta2"):
            if not 0 <= getattr(self, field) < 1:
                fail(field, f"is {getattr(self, field)}", "use a value in [0, 1), e.g. 0.9 and 0.95")
        if self.grad_clip < 0:
            fail("grad_clip", f"is {self.grad_clip}", "use a positive norm such as 1.0, or 0 to disable")
        if self.remat not in REMAT_POLICIES:
            fail("remat", f"is {json.dumps(self.remat)}", f"use one of {', '.join(REMAT_POLICIES)}")
        if self.dtype not in COMPUTE_DTYPES:
            fail("dtype", f"is '{self.dtype}'", f"use one of {', '.join(COMPUTE_DTYPES)}")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            fail("time_budget_minutes", f"is {self.time_budget_minutes}", "use a positive number of minutes, or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_schedule(self) -> str:
        """cosine or wsd: what `auto` means for these settings."""
        if self.schedule != "auto":
            return self.schedule
        return "wsd" if self.time_budget_minutes is not None else "cosine"


def train_config_from_dict(data: Any, source: str) -> TrainConfig:
    if isinstance(data, dict) and isinstance(data.get("remat"), bool):  # runs and recipes from before the policies
        data = {**data, "remat": "full" if data["remat"] else "off"}
    config = dataclass_from_dict(TrainConfig, data, source)
    config.validate(source)
    return config


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """`quick` means config/recipes/quick.json; anything else is a path to a recipe."""
    path = resolve_named_json(name_or_path, RECIPES_DIR, "training recipe")
    return train_config_from_dict(read_json(path), str(path))
