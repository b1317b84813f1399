"""`lumi train` refuses every bad input with one clear line and exit status 2, changing nothing."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from lumi_jax.cli import main
from lumi_jax.config import TrainConfig
from lumi_jax.data import loader
from lumi_jax.data.prepare import prepare_dataset

pytestmark = pytest.mark.usefixtures("compilation_cache")  # compiled steps shared through the cache


@pytest.fixture
def existing_run(tmp_path, dataset_dir, micro_config):
    """A run directory as `lumi train` leaves it before its first checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    dataset = loader.TokenDataset(dataset_dir)
    config = {"model": micro_config.to_dict(),
              "train": TrainConfig(batch_size=8, context=32, lr=3e-3).to_dict(),
              "data": {"path": str(dataset_dir), "tokenizer_sha256": dataset.tokenizer_sha256, "meta": dataset.meta},
              "versions": {}, "init_from": None}
    (run / "config.json").write_text(json.dumps(config))
    return run


def fails_with(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_bad_recipe_field(capsys, dataset_dir, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": 10, "learning_rate": 0.1}))
    fails_with(capsys, ["--recipe", str(recipe), "--data", str(dataset_dir), "--out", str(tmp_path / "r")],
               "unknown field 'learning_rate'")
    fails_with(capsys, ["--recipe", "no-such-recipe", "--data", str(dataset_dir), "--out", str(tmp_path / "r")],
               "no such training recipe", "quick")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--lr", "-1"], "'lr' is -1.0"),
    (["--batch-size", "6", "--grad-accum", "4"], "does not divide batch_size"),
    (["--warmup", "50", "--steps", "50"], "'warmup' (50) is not shorter than steps"),
    (["--context", "1000"], "longer than model 'micro' max_seq_len 128"),
    (["--mesh", "pipeline=2"], "expected data=N,fsdp=M"),
    (["--mesh", "data=3"], "data=3 × fsdp=1 = 3 but there are 1 devices"),
])
def test_absurd_settings(capsys, dataset_dir, tmp_path, flags, fragment):
    fails_with(capsys, ["--model", "micro", *flags, "--data", str(dataset_dir), "--out", str(tmp_path / "r")], fragment)
    assert not (tmp_path / "r").exists()


def test_data_that_does_not_fit_the_model(capsys, dataset_dir, tmp_path):
    fails_with(capsys, ["--model", "tiny", "--data", str(dataset_dir), "--out", str(tmp_path / "r")],
               "has 512 ids but model 'tiny' has vocab_size 4096")
    fails_with(capsys, ["--model", "micro", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
               "no such dataset directory")


def test_validation_split_shorter_than_one_window(capsys, dataset_dir, tmp_path):
    small = tmp_path / "small-val"
    shutil.copytree(dataset_dir, small)
    meta = json.loads((small / "meta.json").read_text())
    dtype = np.dtype(meta["token_dtype"])
    (small / "val.bin").write_bytes(np.fromfile(dataset_dir / "val.bin", dtype)[:50].tobytes())
    (small / "meta.json").write_text(json.dumps({**meta, "val_tokens": 50}))
    fails_with(capsys, ["--model", "micro", "--context", "64", "--data", str(small),
                        "--out", str(tmp_path / "r")], "the val split has 50 tokens", "--eval-every 0")
    assert not (tmp_path / "r").exists()


def test_out_directory_that_is_not_a_run(capsys, dataset_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    fails_with(capsys, ["--model", "micro", "--data", str(dataset_dir), "--out", str(tmp_path / "busy")],
               "is not a lumi run")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    fails_with(capsys, ["--model", "micro", "--data", str(dataset_dir), "--out", str(tmp_path / "new"), "--resume"],
               "no run to resume")


def test_resume_with_other_settings_model_or_data(capsys, existing_run, dataset_dir, tmp_path, micro_config):
    before = (existing_run / "config.json").read_bytes()
    fails_with(capsys, ["--data", str(dataset_dir), "--out", str(existing_run), "--lr", "0.01"],
               "trained with lr=0.003, not 0.01")
    bigger = tmp_path / "micro3.json"
    bigger.write_text(json.dumps({**micro_config.to_dict(), "n_layers": 3}))
    fails_with(capsys, ["--model", str(bigger), "--data", str(dataset_dir), "--out", str(existing_run)],
               "different model config (n_layers differ)")
    other_tokenizer = tmp_path / "other-tokenizer"
    prepare_dataset("sample", other_tokenizer, vocab_size=512, size_mb=0.1, seed=1, log=None)
    fails_with(capsys, ["--data", str(other_tokenizer), "--out", str(existing_run)], "tokenizer differs")
    same_tokenizer_other_text = tmp_path / "other-text"
    prepare_dataset("sample", same_tokenizer_other_text, tokenizer=dataset_dir / "tokenizer.model",
                    size_mb=0.1, seed=2, log=None)
    fails_with(capsys, ["--data", str(same_tokenizer_other_text), "--out", str(existing_run)],
               "trained on different data")
    fails_with(capsys, ["--data", str(dataset_dir), "--out", str(existing_run), "--resume"],
               "no checkpoint to resume from")
    assert (existing_run / "config.json").read_bytes() == before


def test_tensorboard_without_tensorboardx_names_the_install(capsys, dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if it were not installed
    fails_with(capsys, ["--model", "micro", "--tensorboard", "--data", str(dataset_dir),
                        "--out", str(tmp_path / "r")], "pip install -e '.[tensorboard]'")
    assert not (tmp_path / "r").exists()


def test_divergence_ends_with_one_line_and_status_2(capsys, dataset_dir, tmp_path):
    fails_with(capsys, ["--model", "micro", "--steps", "60", "--batch-size", "8", "--context", "32",
                        "--lr", "1000", "--warmup", "1", "--min-lr", "1", "--eval-every", "0", "--save-every", "2",
                        "--log-every", "1", "--quiet", "--data", str(dataset_dir), "--out", str(tmp_path / "r")],
               "training diverged at step", "lower --lr")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["stop_reason"] == "nan"
