"""Real runs for the evaluation and assessment tests, trained once per test session.

Both are `micro` models trained by the real `lumi_jax.train.train` on War and Peace text:
- `under_trained`: 160 steps on ~200 KB; its loss is still falling fast when it stops (it breaks
  out of the unigram plateau near step 80, a moment small numerical differences move);
- `over_fitted`: 200 steps at a high learning rate on ~3,500 training tokens (many epochs);
  its training loss keeps falling while its validation loss turns up (measured: train 3.9,
  validation 4.97 after a minimum of 4.90).
The over-fitted run's dataset has its own tokenizer, so it is also "data with another tokenizer"
for the under-trained run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lumi_jax.config import TrainConfig, load_model_config

_CACHE: dict[str, Path] = {}


def _sectioned_text(source: Path, start: int, length: int, sections: int) -> str:
    """A slice of the book cut into sections (documents are separated by two blank lines)."""
    text = source.read_text(encoding="utf-8")[start:start + length]
    size = length // sections
    return "\n\n\n".join(text[i:i + size] for i in range(0, length, size))


def _train(root: Path, name: str, text: str, val_fraction: float, train_config: TrainConfig) -> Path:
    from lumi_jax.data.prepare import prepare_dataset
    from lumi_jax.train import train

    (root / f"{name}.txt").write_text(text, encoding="utf-8")
    data = root / "data" / name
    prepare_dataset(str(root / f"{name}.txt"), data, model="micro", val_fraction=val_fraction, log=None)
    run = root / "runs" / name
    train(train_config, load_model_config("micro"), data, run, show_progress=False)
    return run


def trained_runs(tmp_path_factory, shared_data_dir: Path) -> dict[str, Path]:
    if not _CACHE:
        book = shared_data_dir / "war_and_peace.txt"
        if not book.is_file():
            pytest.skip(f"{book} is absent")
        root = tmp_path_factory.mktemp("eval_runs")
        _CACHE["under_trained"] = _train(
            root, "under_trained", _sectioned_text(book, 10_000, 200_000, 20), 0.1,
            TrainConfig(steps=160, batch_size=16, context=64, warmup=10, lr=1e-2, min_lr=5e-3,
                        eval_every=10, eval_batches=4, save_every=100, log_every=5))
        _CACHE["over_fitted"] = _train(
            root, "over_fitted", _sectioned_text(book, 5_000, 20_000, 10), 0.5,
            TrainConfig(steps=200, batch_size=16, context=64, warmup=5, lr=2e-2, min_lr=2e-3,
                        weight_decay=0.0, eval_every=20, eval_batches=4, save_every=200, log_every=10))
    return dict(_CACHE)
