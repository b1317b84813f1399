"""What a run directory holds, and loading it: configs, tokenizer, parameters.

A run directory (runs/NAME/) is self-contained: config.json says what model, training and data
made it (and what it was fine-tuned from), tokenizer.model is a copy of the dataset's tokenizer,
checkpoints/ holds the steps, metrics.jsonl and summary.json what training saw. Training writes
it (train.py); generation, evaluation, export and fine-tuning start from `load_run`.

A run is continued only with what makes it the same run: `check_resume_matches` refuses another
model, data, tokenizer or optimisation with one line that says what differs.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import flax
import jax
import optax
import orbax.checkpoint

from lumi_jax.checkpoint import CheckpointStore
from lumi_jax.config import (
    ModelConfig,
    TrainConfig,
    config_hash,
    model_config_from_dict,
    read_json,
    train_config_from_dict,
)
from lumi_jax.data.tokenizer import Tokenizer
from lumi_jax.errors import UserError
from lumi_jax.model import param_shapes

# Settings that change what is computed: a resume must keep them, or it is a different run.
RESUME_LOCKED_FIELDS = ("batch_size", "grad_accum", "context", "lr", "warmup", "min_lr",
                        "weight_decay", "beta1", "beta2", "grad_clip", "seed", "dtype")
# Also kept on resume, with the value a run made before the field existed had.
SCHEDULE_FIELDS = {"schedule": "cosine", "decay_fraction": 0.2}


@dataclasses.dataclass
class LoadedRun:
    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    config: dict[str, Any]  # the whole config.json
    params: Any  # float32 parameter pytree
    tokenizer: Any  # lumi_jax.data.tokenizer.Tokenizer
    step: int


def is_run(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


def load_run(run_dir: str | Path, step: int | None = None) -> LoadedRun:
    """The run's latest good checkpoint (or exactly `step`), with its configs and tokenizer."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a run directory; give the directory lumi train wrote (e.g. runs/NAME)")
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory; train one with: lumi train --out {path} ...")
    if not is_run(path):
        raise UserError(f"{path}: not a lumi run (no config.json); give a directory made by lumi train")
    config = read_json(path / "config.json")
    source = str(path / "config.json")
    if not isinstance(config, dict) or "model" not in config or "train" not in config:
        raise UserError(f"{source}: lacks the 'model' or 'train' section; the run is damaged, train it again")
    model_config = model_config_from_dict(config["model"], f"{source} (model)")
    train_config = train_config_from_dict(config["train"], f"{source} (train)")
    tokenizer_path = path / "tokenizer.model"
    if not tokenizer_path.is_file():
        imported = (config.get("imported_from") or {}).get("path")
        if imported:
            raise UserError(f"{path}: was imported from {imported}, which has no SentencePiece tokenizer.model; "
                            "import it again with --tokenizer PATH/tokenizer.model (or copy one into the run)")
        raise UserError(f"{path}: has no tokenizer.model; copy the dataset's tokenizer.model into the run")
    tokenizer = Tokenizer.load(tokenizer_path)
    expected_sha = config.get("data", {}).get("tokenizer_sha256")
    if expected_sha and tokenizer.sha256 != expected_sha:
        raise UserError(f"{tokenizer_path}: is not the tokenizer this run was trained with (sha256 differs); "
                        "copy the training dataset's tokenizer.model into the run")

    checkpoints = path / "checkpoints"
    if not checkpoints.is_dir():
        raise UserError(f"{path}: has no checkpoints yet; let training run past its first save (--save-every)")
    store = CheckpointStore(checkpoints, read_only=True)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                            param_shapes(model_config))
    restored = store.restore_latest_good(abstract, step=step, expect_model=model_config.to_dict())
    store.close()
    if restored is None:
        raise UserError(f"{path}: has no checkpoints yet; let training run past its first save (--save-every)")
    if restored["meta"].get("tokenizer_sha256") not in (None, tokenizer.sha256):
        raise UserError(f"{path}: its checkpoint was trained with another tokenizer than tokenizer.model; "
                        "the run is inconsistent, train it again")
    return LoadedRun(path=path, model_config=model_config, train_config=train_config, config=config,
                     params=restored["params"], tokenizer=tokenizer, step=int(restored["meta"]["step"]))


def latest_run(runs_dir: str | Path = "runs") -> Path:
    """The most recently modified run directory under `runs_dir`."""
    runs_dir = Path(runs_dir)
    runs = [p for p in runs_dir.iterdir() if is_run(p)] if runs_dir.is_dir() else []
    if not runs:
        raise UserError(f"{runs_dir}: no runs yet; train one with: lumi train --data data/NAME --out {runs_dir}/NAME")
    return max(runs, key=lambda p: max(f.stat().st_mtime for f in [p, *p.iterdir()]))


# ---------------------------------------------------------------------------------------------
# Writing a run: what config.json records, and what a continuation must keep.


def versions() -> dict[str, str]:
    try:
        lumi_version = version("lumi-jax")
    except PackageNotFoundError:
        lumi_version = "unknown"
    return {"lumi_jax": lumi_version, "python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "orbax": orbax.checkpoint.__version__}


def run_identity_hash(model_config: ModelConfig, train_config: TrainConfig, trained_record: dict | None = None) -> str:
    """What a checkpoint must belong to: the model's shape, the settings that change the math,
    and (for LoRA) the adapters' shape. A full-training run hashes as it always has."""
    model = {k: v for k, v in model_config.to_dict().items() if k != "description"}
    identity = {"model": model, "train": {f: getattr(train_config, f) for f in RESUME_LOCKED_FIELDS}}
    if trained_record is not None:
        identity["lora"] = trained_record
    return config_hash(identity)


def data_identity(meta: dict) -> dict:
    """The fields of a dataset's meta.json that say what the data is (not when or how fast)."""
    return {key: value for key, value in meta.items() if key != "created" and not key.endswith("_seconds")}


def check_resume_matches(stored: dict, model_config: ModelConfig, train_config: TrainConfig,
                         dataset, run_dir: Path, trained_record: dict | None = None) -> None:
    """Refuse to continue a run with a different model, data, tokenizer, optimisation or LoRA shape."""
    source = run_dir / "config.json"
    stored_model = dict(stored.get("model", {}))
    wanted_model = model_config.to_dict()
    for ignored in ("dtype", "description"):  # compute dtype is a training setting, checked below
        stored_model.pop(ignored, None)
        wanted_model.pop(ignored, None)
    if stored_model != wanted_model:
        changed = sorted(k for k in set(stored_model) | set(wanted_model) if stored_model.get(k) != wanted_model.get(k))
        raise UserError(
            f"{source}: the run was trained with a different model config ({', '.join(changed)} differ); "
            "resume with the run's own model, or train into a new --out directory"
        )
    stored_data = stored.get("data", {})
    if stored_data.get("tokenizer_sha256") != dataset.tokenizer_sha256:
        raise UserError(
            f"{source}: the run's tokenizer differs from the dataset's ({dataset.tokenizer_path}); "
            f"resume with the run's data ({stored_data.get('path')}), or train into a new --out directory"
        )
    if data_identity(stored_data.get("meta") or {}) != data_identity(json.loads(json.dumps(dataset.meta))):
        raise UserError(
            f"{source}: the run was trained on different data ({stored_data.get('path')}); "
            "resume with the same dataset, or train into a new --out directory"
        )
    stored_train = stored.get("train", {})
    for field in RESUME_LOCKED_FIELDS:
        if stored_train.get(field) != getattr(train_config, field):
            raise UserError(
                f"{source}: the run was trained with {field}={json.dumps(stored_train.get(field))}, "
                f"not {json.dumps(getattr(train_config, field))}; resume with the same setting, "
                "or train into a new --out directory"
            )
    for field, before_it_existed in SCHEDULE_FIELDS.items():  # not in the identity hash: older runs still resume
        stored_value = stored_train.get(field, before_it_existed)
        if stored_value != getattr(train_config, field):
            raise UserError(
                f"{source}: the run was trained with {field}={json.dumps(stored_value)}, not "
                f"{json.dumps(getattr(train_config, field))}; resume with the same setting, or train into a new --out directory"
            )
    if stored.get("lora") != trained_record:
        what = f"LoRA rank {stored['lora']['rank']}" if stored.get("lora") else "full training"
        raise UserError(f"{source}: the run was made by {what}; continue it the same way "
                        "(lumi sft with the same --lora-rank), or train into a new --out directory")
