"""Loading a finished (or running) run: its configs, its tokenizer and its parameters.

A run directory (runs/NAME/) is self-contained: config.json says what model, training and data
made it, tokenizer.model is a copy of the dataset's tokenizer, checkpoints/ holds the steps.
Generation, evaluation, export and fine-tuning all start here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from lumi_jax.checkpoint import CheckpointStore
from lumi_jax.config import (
    ModelConfig,
    TrainConfig,
    model_config_from_dict,
    read_json,
    train_config_from_dict,
)
from lumi_jax.errors import UserError
from lumi_jax.model import param_shapes


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
    from lumi_jax.data.tokenizer import Tokenizer

    path = Path(run_dir)
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
    restored = store.restore_latest_good(abstract, step=step)
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
