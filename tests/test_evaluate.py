"""Evaluation: the bits-per-byte and baseline arithmetic, the report, and clear refusals."""

from __future__ import annotations

import json
import math
import shutil

import jax
import numpy as np
import pytest
from eval_runs import trained_runs

from lumi_jax import cli, evaluate
from lumi_jax.data.loader import TokenDataset
from lumi_jax.errors import USER_ERROR_EXIT_STATUS
from lumi_jax.runs import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir):
    return trained_runs(tmp_path_factory, shared_data_dir)


@pytest.fixture(scope="module")
def quick_report(runs):
    return evaluate.evaluate_run(runs["under_trained"], quick=True)


def test_bits_per_byte_arithmetic():
    # 80 bits over 40 bytes is 2 bits per byte, whatever the tokens.
    assert evaluate.bits_per_byte(80 * math.log(2), 40) == pytest.approx(2.0)
    assert evaluate.bits_per_byte(0.0, 10) == 0.0
    with pytest.raises(ValueError):
        evaluate.bits_per_byte(1.0, 0)


def test_unigram_baseline_is_add_one_smoothed_train_frequency():
    train_tokens = np.array([0, 0, 1, 2])  # counts 2, 1, 1, 0 over a vocabulary of 4
    log_p = evaluate.unigram_log_probs(train_tokens, 4)
    np.testing.assert_allclose(np.exp(log_p), [3 / 8, 2 / 8, 2 / 8, 1 / 8])
    # Tiny chunks give the same counts as one pass.
    np.testing.assert_allclose(evaluate.unigram_log_probs(train_tokens, 4, chunk=3), log_p)


def test_sample_statistics_on_known_sequences():
    assert evaluate.distinct_n([[1, 2, 3], [1, 2, 4]], 1) == pytest.approx(4 / 6)
    assert evaluate.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)
    assert evaluate.repetition_rate([5, 6, 7, 8, 9], n=2) == 0.0
    # 1 2 1 2 1 2: bigrams 12 21 12 21 12 -> the last three were seen before.
    assert evaluate.repetition_rate([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(3 / 5)
    assert evaluate.repetition_rate([1, 2], n=4) is None


def test_token_byte_lengths_add_up_to_the_dataset_bytes(runs):
    loaded = load_run(runs["under_trained"])
    dataset = TokenDataset(loaded.config["data"]["path"])
    lengths = evaluate.token_byte_lengths(loaded.tokenizer)
    assert lengths[:3].tolist() == [0, 0, 0]  # unk, BOS, EOS stand for no text
    for split in ("train", "val"):
        tokens = np.asarray(dataset.split(split).tokens, np.int64)
        assert int(lengths[tokens].sum()) == dataset.meta[f"{split}_bytes"]


def test_a_uniform_model_scores_exactly_log_v(runs):
    """Known case: all-zero parameters give all-zero logits, a uniform distribution over V
    tokens: loss ln V per token and bits per byte = tokens · log2 V / bytes."""
    loaded = load_run(runs["under_trained"])
    config = loaded.model_config
    zeros = jax.tree.map(np.zeros_like, loaded.params)
    dataset = TokenDataset(loaded.config["data"]["path"])
    val = dataset.split("val")
    scored = evaluate.score_split(config, zeros, val, loaded.tokenizer, context=64, max_windows=None,
                                  unigram_log_p=evaluate.unigram_log_probs(dataset.split("train").tokens,
                                                                           config.vocab_size))
    assert scored["tokens"] == len(val) - 1  # every token after the first, once
    assert scored["bytes"] == dataset.meta["val_bytes"]  # the first token is a BOS: no bytes
    assert scored["loss"] == pytest.approx(math.log(config.vocab_size), rel=1e-6)
    expected_bpb = scored["tokens"] * math.log2(config.vocab_size) / scored["bytes"]
    assert scored["bits_per_byte"] == pytest.approx(expected_bpb, rel=1e-6)
    assert scored["baselines"]["uniform"]["bits_per_byte"] == pytest.approx(expected_bpb, rel=1e-9)
    assert scored["baselines"]["unigram"]["bits_per_byte"] < expected_bpb


def test_report_fields_and_files(runs, quick_report):
    run = runs["under_trained"]
    saved = json.loads((run / "eval.json").read_text())
    assert saved == json.loads(json.dumps(quick_report))
    v = quick_report["validation"]
    assert quick_report["step"] == 160 and quick_report["quick"] is True
    assert v["windows"] == evaluate.QUICK_WINDOWS and not v["whole_split"]
    for key in ("loss", "loss_stderr", "perplexity", "bits_per_token", "bits_per_byte", "tokens", "bytes"):
        assert np.isfinite(v[key]) and v[key] > 0, key
    assert v["perplexity"] == pytest.approx(math.exp(v["loss"]))
    baselines = quick_report["baselines"]
    assert v["bits_per_byte"] < baselines["unigram"]["bits_per_byte"] < baselines["uniform"]["bits_per_byte"]
    assert quick_report["gain_over_unigram_bits_per_byte"] == pytest.approx(
        baselines["unigram"]["bits_per_byte"] - v["bits_per_byte"])
    samples = quick_report["samples"]
    assert set(samples["by_category"]) == set(evaluate.load_prompts())
    for key in ("distinct_1", "distinct_2", "repetition_rate"):
        assert 0 <= samples[key] <= 1 and 0 <= samples["reference_text"][key] <= 1
    assert quick_report["exact_match"] is None  # not a fine-tuned run
    markdown = (run / "eval.md").read_text()
    assert "bits per byte" in markdown and "## Samples" in markdown


def _user_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == USER_ERROR_EXIT_STATUS
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_end_with_one_clear_line(runs, quick_report, tmp_path, capsys):
    run = runs["under_trained"]
    before = (run / "eval.json").read_bytes()

    assert "no such run directory" in _user_error(["evaluate", "--run", str(tmp_path / "nope")], capsys)

    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(run / name, no_checkpoint / name)
    assert "no checkpoints" in _user_error(["evaluate", "--run", str(no_checkpoint)], capsys)

    other_data = json.loads((runs["over_fitted"] / "config.json").read_text())["data"]["path"]
    message = _user_error(["evaluate", "--run", str(run), "--data", other_data, "--quick"], capsys)
    assert "another tokenizer" in message

    assert (run / "eval.json").read_bytes() == before  # nothing on disk was replaced


def test_instruction_data_adds_held_out_exact_match(runs, tmp_path):
    from lumi_jax.data.prepare import prepare_dataset

    run = runs["under_trained"]
    instructions = tmp_path / "instructions"
    prepare_dataset("sample-instructions", instructions, tokenizer=run / "tokenizer.model", size_mb=0.2, log=None)
    report = evaluate.evaluate_run(run, instructions, quick=True, samples=False, write=False)
    exact = report["exact_match"]
    assert exact["total"] == evaluate.QUICK_EXACT_MATCH_EXAMPLES
    assert 0 <= exact["accuracy"] <= 1 and exact["correct"] == round(exact["accuracy"] * exact["total"])
    assert report["samples"] is None and report["data"] == str(instructions)
    assert "exact match" in evaluate.render_markdown(report)
