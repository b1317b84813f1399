"""Config loading: every malformed or inconsistent model config gives one clear line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lumi_jax.cli import main
from lumi_jax.config import ARCHITECTURES_DIR, load_model_config
from lumi_jax.errors import UserError

GOOD = json.loads((ARCHITECTURES_DIR / "micro.json").read_text())


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"d_model": "64"}, "d_model", "must be an integer"),
        ({"d_model": 64.5}, "d_model", "must be an integer"),
        ({"n_layers": True}, "n_layers", "must be an integer"),
        ({"n_layers": 0}, "n_layers", "positive"),
        ({"vocab_size": -5}, "vocab_size", "positive"),
        ({"n_heads": 5}, "n_heads", "does not divide d_model"),
        ({"n_kv_heads": 3}, "n_kv_heads", "does not divide n_heads"),
        ({"n_heads": 64}, "n_heads", "odd head size"),
        ({"dtype": "float16"}, "dtype", "float32, bfloat16"),
        ({"norm_eps": 0}, "norm_eps", "small positive"),
        ({"rope_theta": -1.0}, "rope_theta", "positive"),
    ],
)
def test_invalid_model_config_names_file_field_and_fix(tmp_path, change, field, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(UserError) as error:
        load_model_config(path)
    message = str(error.value)
    assert str(path) in message and f"'{field}'" in message and words in message


def test_missing_field_and_broken_json(tmp_path):
    missing = {k: v for k, v in GOOD.items() if k != "d_model"}
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(UserError, match="missing required field 'd_model'"):
        load_model_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"d_model": 64,')
    with pytest.raises(UserError, match="invalid JSON at line 1"):
        load_model_config(tmp_path / "broken.json")
    with pytest.raises(UserError, match="no such model config"):
        load_model_config(tmp_path / "absent.json")


def test_names_resolve_to_the_shipped_configs():
    assert load_model_config("tiny").d_model == 256
    assert load_model_config("tinyllama-1.1b").kv_heads == 4


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GOOD, "n_heads": 5}))
    with pytest.raises(SystemExit) as exit_info:
        main(["architecture", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "n_heads" in err[0]


def test_cli_missing_path_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lumi_jax.cli", "architecture", str(tmp_path / "nope.json")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr


def test_a_run_config_written_before_the_fields_were_regrouped_still_loads():
    """config.json's "train" as runs stored it (the old field order); order is free, names and types are not."""
    from lumi_jax.config import TrainConfig, train_config_from_dict

    stored = {"steps": 300, "batch_size": 8, "grad_accum": 2, "context": 32, "lr": 0.003, "warmup": 10,
              "copy_warmup_steps": 0, "min_lr": 0.0003, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
              "grad_clip": 1.0, "seed": 0, "dtype": "float32", "remat": False, "time_budget_minutes": None,
              "save_every": 100, "keep_checkpoints": 3, "eval_every": 100, "eval_batches": 8, "log_every": 10,
              "mesh_data": 0, "mesh_fsdp": 1, "tensorboard": False, "description": ""}
    config = train_config_from_dict(stored, "runs/old/config.json")
    added_since = {"schedule": "auto", "decay_fraction": 0.2, "recall_share": 0.0}  # old runs load with defaults
    assert config.to_dict() == stored | added_since | {"remat": "off"}  # remat was a yes/no before its policies
    assert train_config_from_dict({**stored, "remat": True}, "old").remat == "full"
    assert set(TrainConfig().to_dict()) == set(stored) | set(added_since)
