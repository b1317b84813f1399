"""Fine-tuning: the template, the loss mask, truncation, `lumi sft` from a pretrained run, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from lumi_jax import cli, sft
from lumi_jax.config import TrainConfig
from lumi_jax.data import loader, template
from lumi_jax.data.instructions import held_out_examples
from lumi_jax.data.loader import example_segments
from lumi_jax.data.prepare import prepare_dataset
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from lumi_jax.lora import adapter_names
from lumi_jax.model import forward, init_params
from lumi_jax.run_lock import holds_lock
from lumi_jax.runs import load_run
from lumi_jax.step import enable_compilation_cache, loss_sums
from lumi_jax.train import train

CONTEXT = 64
SFT_FLAGS = ["--steps", "3", "--batch-size", "4", "--context", str(CONTEXT), "--warmup", "1",
             "--eval-every", "0", "--save-every", "3", "--eval-examples", "8", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache():
    enable_compilation_cache()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, micro_config):
    """A micro run pretrained for two steps on sample stories (enough to be a real run)."""
    root = tmp_path_factory.mktemp("sft")
    prepare_dataset("sample", root / "stories", vocab_size=512, size_mb=0.2, log=None)
    config = TrainConfig(steps=2, batch_size=4, context=CONTEXT, warmup=1, eval_every=0, save_every=2, log_every=1)
    train(config, micro_config, root / "stories", root / "pre", show_progress=False)
    return root / "pre"


@pytest.fixture(scope="module")
def instructions_dir(pretrained):
    out = pretrained.parent / "instr"
    prepare_dataset("sample-instructions", out, tokenizer=pretrained / "tokenizer.model", size_mb=0.05, log=None)
    return out


def run_cli(argv, capsys):
    """(exit status, stderr) of `lumi ARGV` run in process."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The template.


def test_template_round_trip():
    for instruction, input_text in (("Reverse the list.", "cat, dog"), ("What is 2 plus 3?", "")):
        prompt, target = template.format_example(instruction, input_text, "the answer")
        assert prompt.endswith(template.RESPONSE_MARKER) and target == " the answer"
        assert (template.INPUT_HEADER in prompt) == bool(input_text)
        assert template.parse_example(prompt + target) == (instruction, input_text, "the answer")
    assert template.format_prompt("Say hi.") == "Task: Say hi.\nAnswer:"
    assert template.format_prompt("Reverse.", "a, b") == "Task: Reverse.\nInput: a, b\nAnswer:"


def test_chat_prompt_uses_the_same_sections():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}]
    assert template.format_chat_prompt(messages[:1]) == template.format_prompt("Hi")
    assert template.format_chat_prompt(messages) == "Task: Hi\nAnswer: Hello.\nTask: Bye\nAnswer:"


# ---------------------------------------------------------------------------------------------
# The loss mask.


def test_mask_covers_responses_and_eos_only(instructions_dir):
    dataset = loader.TokenDataset(instructions_dir)
    tokenizer = Tokenizer.load(dataset.tokenizer_path)
    split = dataset.split("val")
    tokens, mask = np.asarray(split.tokens), np.asarray(split.mask)
    starts, ends = sft.example_bounds(tokens)
    examples = held_out_examples(instructions_dir)
    assert len(starts) == len(examples)
    for start, end, example in list(zip(starts, ends, examples, strict=True))[:50]:
        ids, weights = tokens[start:end], mask[start:end]
        assert ids[0] == BOS_ID and weights[0] == 0 and ids[-1] == EOS_ID and weights[-1] == 1
        assert tokenizer.decode(ids[1:][weights[1:] == 0]) == example["prompt"]
        assert tokenizer.decode(ids[:-1][weights[:-1] == 1]) == " " + example["response"]
        # prompt first, then response: one boundary, no interleaving
        assert np.all(np.diff(weights[1:].astype(int)) >= 0)


def test_prompt_tokens_carry_zero_weight_in_the_loss(instructions_dir, micro_config):
    """Changing every target that sits on a prompt token leaves the training loss unchanged."""
    split = loader.TokenDataset(instructions_dir).split("train")
    batch = loader.train_batch(split, seed=0, step=0, batch_size=4, context=CONTEXT)
    prompt_positions = batch.weights == 0
    assert prompt_positions.any() and (~prompt_positions).any()
    scrambled = np.where(prompt_positions, (batch.targets + 7) % micro_config.vocab_size, batch.targets)
    params = init_params(micro_config, jax.random.key(0))
    jitted = jax.jit(loss_sums, static_argnums=1)

    def loss(params, config, inputs, targets, weights):
        return jitted(params, config, {"inputs": inputs, "targets": targets, "weights": weights})

    nats, weight = loss(params, micro_config, batch.inputs, batch.targets, batch.weights)
    nats_scrambled, _ = loss(params, micro_config, batch.inputs, scrambled, batch.weights)
    assert float(weight) == float((~prompt_positions).sum())
    assert float(nats) == float(nats_scrambled)
    # ...while changing a response target does change it (the check can fail).
    changed = np.where(~prompt_positions, (batch.targets + 7) % micro_config.vocab_size, batch.targets)
    assert float(loss(params, micro_config, batch.inputs, changed, batch.weights)[0]) != float(nats)


def test_instruction_windows_start_at_an_example(instructions_dir, pretrained):
    """No training window of instruction data begins inside an example (an answer without its
    question); windows of text data still start anywhere."""
    split = loader.TokenDataset(instructions_dir).split("train")
    starts = np.concatenate([loader.train_window_starts(len(split), seed=3, step=step, batch_size=16, context=CONTEXT,
                                                        example_starts=split.example_starts) for step in range(20)])
    assert np.all(np.asarray(split.tokens)[starts] == BOS_ID)
    assert np.all(starts + CONTEXT < len(split))
    assert len(np.unique(starts)) > 100  # spread over the examples, not a few fixed ones
    batch = loader.train_batch(split, seed=3, step=0, batch_size=16, context=CONTEXT)
    assert np.all(batch.inputs[:, 0] == BOS_ID)

    stories = loader.TokenDataset(pretrained.parent / "stories").split("train")
    assert stories.example_starts is None
    text_starts = loader.train_window_starts(len(stories), seed=3, step=0, batch_size=64, context=CONTEXT)
    assert np.any(np.asarray(stories.tokens)[text_starts] != BOS_ID)


def test_packed_examples_do_not_see_each_other(instructions_dir, micro_config):
    """The second example of a packed row scores exactly as it does alone (the held-out question
    is always asked alone); with attention across the row it would not."""
    tokens = np.asarray(loader.TokenDataset(instructions_dir).split("train").tokens)
    starts, ends = sft.example_bounds(tokens)
    first, second = tokens[starts[0]:ends[0]], tokens[starts[1]:ends[1]]
    packed = np.concatenate([first, second])[None, :].astype(np.int32)
    alone = second[None, :].astype(np.int32)
    params = init_params(micro_config, jax.random.key(2))

    def nats(inputs, separate):  # −log p of each next token, per position
        targets = np.roll(inputs, -1, axis=1)
        weights = np.ones(inputs.shape, np.float32)
        logits = forward(micro_config, params, inputs,
                         segments_BT=example_segments(inputs) if separate else None)
        per_token = np.asarray(jax.nn.logsumexp(logits, -1) - np.take_along_axis(logits, targets[..., None], -1)[..., 0])
        batch = {"inputs": inputs, "targets": targets, "weights": weights}
        if separate:
            batch["segments"] = example_segments(inputs)
        total, _ = loss_sums(params, micro_config, batch)
        return per_token[0], float(total)

    separated, _ = nats(packed, True)
    by_itself, _ = nats(alone, False)
    np.testing.assert_allclose(separated[len(first):-1], by_itself[:-1], rtol=1e-5, atol=1e-5)
    mixed, _ = nats(packed, False)
    assert not np.allclose(mixed[len(first):-1], by_itself[:-1], rtol=1e-5, atol=1e-5)
    assert nats(packed, True)[1] != nats(packed, False)[1]


def test_scoring_only_answer_positions_gives_the_same_loss_and_gradients(instructions_dir, micro_config):
    """The head on the weighted positions only (the fine-tuning fast path) against the full head:
    same sums, same gradients; the bound is the true maximum over the windows training draws."""
    split = loader.TokenDataset(instructions_dir).split("train")
    limit = loader.max_window_targets(split, CONTEXT)
    running = np.concatenate([[0], np.cumsum(np.asarray(split.mask) > 0)])
    brute_force = max(int(running[s + 1 + CONTEXT] - running[s + 1])
                      for s in split.example_starts if s < len(split) - CONTEXT)
    assert limit == brute_force and 0 < limit < CONTEXT // 2
    assert loader.max_window_targets(loader.TokenDataset(instructions_dir.parent / "stories").split("train"),
                                     CONTEXT) is None

    batch = loader.train_batch(split, seed=5, step=1, batch_size=4, context=CONTEXT)
    params = init_params(micro_config, jax.random.key(1))

    def loss(params, scored_limit):
        nats, weight = loss_sums(params, micro_config, batch.arrays(), scored_limit=scored_limit)
        return nats / weight, (nats, weight)

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    full_grads, (full_nats, full_weight) = grad(params, None)
    fast_grads, (fast_nats, fast_weight) = grad(params, 4 * limit)
    assert float(fast_weight) == float(full_weight) == float(batch.weights.sum())
    np.testing.assert_allclose(float(fast_nats), float(full_nats), rtol=1e-5)
    for full, fast in zip(jax.tree.leaves(full_grads), jax.tree.leaves(fast_grads), strict=True):
        np.testing.assert_allclose(np.asarray(fast), np.asarray(full), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Truncation of examples longer than the context.


def test_truncation_drops_prompt_tokens_first():
    tokens = np.array([BOS_ID, 10, 11, 12, 13, 14, 20, 21, EOS_ID])
    mask = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1], np.uint8)
    kept, kept_mask, what = sft.truncate_example(tokens, mask, 6)
    assert what == "prompt"
    assert kept.tolist() == [BOS_ID, 13, 14, 20, 21, EOS_ID] and kept_mask.tolist() == [0, 0, 0, 1, 1, 1]
    kept, _, what = sft.truncate_example(tokens, mask, 3)
    assert what == "response" and kept.tolist() == [BOS_ID, 20, 21]
    assert sft.truncate_example(tokens, mask, 9)[2] == ""


def test_long_examples_are_truncated_in_a_copy_and_counted(instructions_dir, tmp_path):
    before = (instructions_dir / "train.bin").read_bytes()
    logged = []
    path, report = sft.fit_to_context(instructions_dir, 40, tmp_path / "copy", logged.append)
    assert path == tmp_path / "copy"
    assert (instructions_dir / "train.bin").read_bytes() == before  # the original is untouched
    assert report["truncated_prompt"]["train"] > 0 and "truncated from the prompt side" in logged[0]
    copy = loader.TokenDataset(path)
    tokens = np.asarray(copy.split("train").tokens)
    starts, ends = sft.example_bounds(tokens)
    assert len(starts) == report["examples"]["train"] and np.all(ends - starts <= 41)
    assert copy.meta["train_tokens"] == len(tokens)
    # A context that fits everything trains on the dataset itself.
    assert sft.fit_to_context(instructions_dir, 512, tmp_path / "unused", logged.append)[0] == instructions_dir


# ---------------------------------------------------------------------------------------------
# `lumi sft`.


def test_sft_starts_from_the_pretrained_run_and_keeps_its_tokenizer(pretrained, instructions_dir, capsys):
    out = pretrained.parent / "ft"
    status, err = run_cli(["sft", "--from", str(pretrained), "--data", str(instructions_dir), "--out", str(out),
                           *SFT_FLAGS], capsys)
    assert status == 0, err
    base, tuned = load_run(pretrained), load_run(out)
    assert tuned.step == 3
    assert tuned.tokenizer.sha256 == base.tokenizer.sha256
    assert json.loads((out / "config.json").read_text())["init_from"] == str(pretrained)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), base.params, tuned.params)
    assert all(jax.tree.leaves(changed))  # full fine-tuning moves every tensor
    report = json.loads((out / "sft.json").read_text())
    assert report["method"] == "full"
    assert report["held_out_exact_match"]["before"]["total"] == 8
    assert report["held_out_exact_match"]["after"]["total"] == 8


def test_sft_holds_the_run_lock_until_sft_json_is_written(pretrained, instructions_dir, capsys, monkeypatch):
    out = pretrained.parent / "ft-locked"
    seen = []
    real_write = sft.write_json_atomic

    def write_noting_the_lock(path, value):
        if Path(path).name == "sft.json":
            seen.append(holds_lock(out))
        return real_write(path, value)

    monkeypatch.setattr(sft, "write_json_atomic", write_noting_the_lock)
    status, err = run_cli(["sft", "--from", str(pretrained), "--data", str(instructions_dir), "--out", str(out),
                           *SFT_FLAGS], capsys)
    assert status == 0, err
    assert seen == [True] and not holds_lock(out) and not (out / ".lock").exists()


def test_lora_sft_changes_only_the_adapted_matrices(pretrained, instructions_dir, capsys):
    out = pretrained.parent / "lora"
    status, err = run_cli(["sft", "--from", str(pretrained), "--data", str(instructions_dir), "--out", str(out),
                           "--lora-rank", "2", "--lr", "0.01", *SFT_FLAGS], capsys)
    assert status == 0, err
    base, tuned = load_run(pretrained), load_run(out)
    flat_base = {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(base.params)}
    flat_tuned = {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tuned.params)}
    adapted = {f"{name}/kernel" for name in adapter_names(base.params)}
    for name, leaf in flat_base.items():
        assert np.array_equal(leaf, flat_tuned[name]) == (name not in adapted), name
    assert json.loads((out / "config.json").read_text())["lora"]["rank"] == 2


def test_mismatched_tokenizer_is_refused(pretrained, capsys):
    other = pretrained.parent / "instr-other-tokenizer"
    prepare_dataset("sample-instructions", other, vocab_size=512, size_mb=0.05, log=None)
    out = pretrained.parent / "never"
    status, err = run_cli(["sft", "--from", str(pretrained), "--data", str(other), "--out", str(out), *SFT_FLAGS], capsys)
    assert status == 2
    assert "another tokenizer" in err and f"--tokenizer {pretrained}/tokenizer.model" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_missing_pretrained_run_is_refused(tmp_path, instructions_dir, capsys):
    status, err = run_cli(["sft", "--from", str(tmp_path / "nope"), "--data", str(instructions_dir),
                           "--out", str(tmp_path / "out"), *SFT_FLAGS], capsys)
    assert status == 2 and "no such run directory" in err and not (tmp_path / "out").exists()


def test_plain_text_data_is_refused(pretrained, capsys):
    status, err = run_cli(["sft", "--from", str(pretrained), "--data", str(pretrained.parent / "stories"),
                           "--out", str(pretrained.parent / "never2"), *SFT_FLAGS], capsys)
    assert status == 2 and "not instructions" in err


def test_the_truncated_copy_is_written_atomically_with_its_checksums(instructions_dir, tmp_path, monkeypatch):
    path, _ = sft.fit_to_context(instructions_dir, 40, tmp_path / "copy", lambda _line: None)
    copy = loader.TokenDataset(path)
    assert copy.verify_checksums() == ["train.bin", "train_mask.bin", "val.bin", "val_mask.bin"]
    copy.check_ids()
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def crash(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sft, "split_checksums", crash)  # a failure after the token files are written
    with pytest.raises(OSError):
        sft.fit_to_context(instructions_dir, 40, tmp_path / "copy", lambda _line: None)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # the earlier copy, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary left behind


def test_a_users_jsonl_gets_the_same_held_out_evaluation(pretrained, tmp_path, capsys):
    """Alpaca records of the user's own: `lumi prepare` holds some out (val split), `lumi sft`
    fine-tunes on the rest and scores the held-out ones by exact match, before and after."""
    colors = ["red", "blue", "green", "yellow", "pink", "brown"]
    records = [{"instruction": "What color comes next?", "input": f"{a}, {b}", "output": b}
               for a in colors for b in colors if a != b]
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    data = tmp_path / "mine"
    status, err = run_cli(["prepare", "--source", str(source), "--out", str(data), "--tokenizer",
                           str(pretrained / "tokenizer.model"), "--val-fraction", "0.2"], capsys)
    assert status == 0, err
    held_out = held_out_examples(data)
    assert 0 < len(held_out) < len(records)
    assert all(e["prompt"].endswith(template.RESPONSE_MARKER) and e["response"] in colors for e in held_out)

    out = tmp_path / "mine-sft"
    status, err = run_cli(["sft", "--from", str(pretrained), "--data", str(data), "--out", str(out), *SFT_FLAGS],
                          capsys)
    assert status == 0, err
    scored = json.loads((out / "sft.json").read_text())["held_out_exact_match"]
    assert scored["examples"] == min(8, len(held_out))
    assert scored["before"]["total"] == scored["after"]["total"] == scored["examples"]
    assert "baselines" not in scored["after"]  # a user's records offer no candidates to pick from
