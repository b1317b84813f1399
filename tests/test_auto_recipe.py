"""`--recipe auto`: the vocabulary from the text's size, the shape from measured speed and the
budget, the reasons recorded; bad requests refused in one line."""

from __future__ import annotations

import json

import pytest

from lumi_jax import auto_recipe, cli
from lumi_jax.errors import USER_ERROR_EXIT_STATUS


def test_vocabulary_grows_with_the_text():
    assert auto_recipe.vocab_for_corpus(1_000_000) == 2048
    assert auto_recipe.vocab_for_corpus(4_000_000) == 8192
    assert auto_recipe.vocab_for_corpus(10_000) == 512  # never below 512: the byte pieces come first
    assert auto_recipe.vocab_for_corpus(10**10) == 32000  # never above 32000


def test_learning_rate_falls_with_width():
    assert auto_recipe.learning_rate(64) == 3e-3
    assert auto_recipe.learning_rate(256) == pytest.approx(1.5e-3)
    assert auto_recipe.learning_rate(256) > auto_recipe.learning_rate(512)


@pytest.fixture
def known_speeds(tmp_path, monkeypatch):
    """A throughput cache that says every candidate runs at the given tokens/s: no measuring."""
    path = tmp_path / "throughput.json"
    monkeypatch.setenv(auto_recipe.CACHE_ENV, str(path))

    def write(speeds: dict[int, float], vocab: int, batch: int = 8, context: int = 128):
        cache = {}
        for d, layers, heads in auto_recipe.CANDIDATE_SHAPES:
            config = auto_recipe.candidate_config(d, layers, heads, vocab, context)
            cache[auto_recipe.throughput_key(config, batch, context)] = speeds[d]
        path.write_text(json.dumps(cache))

    return write


def test_a_bigger_budget_buys_a_bigger_model(known_speeds):
    known_speeds({64: 50_000, 96: 25_000, 128: 12_000, 192: 6_000, 256: 2_000}, vocab=512)
    small_model, config, reasons = auto_recipe.choose(50_000_000, 20, vocab_size=512, log=lambda _: None)
    larger_model, _, _ = auto_recipe.choose(50_000_000, 540, vocab_size=512, log=lambda _: None)
    assert small_model.name == "auto-d64-l2"
    assert larger_model.d_model > small_model.d_model
    assert config.schedule == "wsd" and config.time_budget_minutes == pytest.approx(20 / 60, abs=0.01)
    assert config.lr == auto_recipe.learning_rate(small_model.d_model)
    assert {"vocab_size", "model", "batch", "lr", "steps", "candidates"} <= set(reasons)
    assert "tokens per parameter" in reasons["model"]


def test_a_small_text_caps_the_model_by_passes_over_it(known_speeds):
    known_speeds({64: 50_000, 96: 50_000, 128: 50_000, 192: 50_000, 256: 50_000}, vocab=512)
    with_text, _, _ = auto_recipe.choose(50_000_000, 540, vocab_size=512, log=lambda _: None)
    little_text, _, _ = auto_recipe.choose(200_000, 540, vocab_size=512, log=lambda _: None)
    assert little_text.d_model < with_text.d_model  # 4 passes over 200 kB cannot feed the big shape


def test_a_budget_that_outlasts_the_text_ends_the_run_after_its_passes(known_speeds):
    known_speeds({64: 50_000, 96: 50_000, 128: 50_000, 192: 50_000, 256: 50_000}, vocab=512)
    _, short_budget, _ = auto_recipe.choose(50_000_000, 60, vocab_size=512, bytes_per_token=2.5, log=lambda _: None)
    _, long_budget, reasons = auto_recipe.choose(200_000, 540, vocab_size=512, bytes_per_token=2.5,
                                                 log=lambda _: None)
    passes = auto_recipe.MAX_EPOCHS * 200_000 / 2.5  # tokens in MAX_EPOCHS passes over the text
    assert long_budget.steps == -(-passes // (long_budget.batch_size * long_budget.context))
    assert f"{auto_recipe.MAX_EPOCHS} passes" in reasons["steps"]
    assert short_budget.steps * short_budget.batch_size * short_budget.context > 60 * 50_000  # the budget decides


def run_cli(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def test_auto_needs_a_budget_and_chooses_the_model_itself(dataset_dir, tmp_path, capsys):
    status, err = run_cli(["train", "--data", str(dataset_dir), "--out", str(tmp_path / "a"), "--recipe", "auto"],
                          capsys)
    assert status == USER_ERROR_EXIT_STATUS and "give --time-budget MINUTES" in err
    status, err = run_cli(["train", "--data", str(dataset_dir), "--out", str(tmp_path / "a"), "--recipe", "auto",
                           "--time-budget", "1", "--model", "micro"], capsys)
    assert status == USER_ERROR_EXIT_STATUS and "leave out --model" in err
    assert not (tmp_path / "a").exists()
