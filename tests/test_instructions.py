"""The sample-instructions generator (held-out unseen combinations) and instruction JSONL reading."""

from __future__ import annotations

import collections
import json
import random

import pytest

from lumi_jax import cli
from lumi_jax.data import instructions
from lumi_jax.data import sample_corpus as world
from lumi_jax.data.catalog import load_corpus
from lumi_jax.data.prepare import prepare_dataset
from lumi_jax.data.sources import SourceOptions
from lumi_jax.data.template import INSTRUCTION_HEADER, RESPONSE_MARKER, format_prompt
from lumi_jax.errors import UserError


@pytest.fixture(scope="module")
def splits():
    return instructions.generate_splits(instructions.DEFAULT_TRAIN_EXAMPLES, 480, seed=0)  # the default dataset


def test_dev_and_test_combinations_never_occur_in_training_or_in_each_other(splits):
    train_combinations = {e.combination for e in splits.train}
    train_prompts = {e.prompt for e in splits.train}
    for name in ("dev", "test"):
        held_out = getattr(splits, name)
        assert all(instructions.split_of(e.combination, 0) == name for e in held_out)
        assert not any(e.combination in train_combinations for e in held_out)
        assert not any(e.prompt in train_prompts for e in held_out)
        assert len({e.prompt for e in held_out}) == len(held_out)  # distinct questions, not repeats
    assert not {e.combination for e in splits.dev} & {e.combination for e in splits.test}


def test_held_out_parts_are_all_seen_in_training(splits):
    """Unseen *combinations* of seen parts: each held-out phrasing and each held-out fact or answer
    word occurs in training, only never in that pairing."""
    phrasings = collections.defaultdict(set)
    for e in splits.train:
        phrasings[e.task].add(e.combination[1] if e.family in ("add", "compare") else e.instruction.split()[0])
    story_names = {e.combination[1] for e in splits.train if e.family == "story"}
    story_answers = {e.output for e in splits.train if e.family == "story"}
    span_words = {word for e in splits.train if e.family == "span" for word in e.output.split()}
    for e in splits.dev + splits.test:
        if e.family in ("add", "compare"):
            assert e.combination[1] in phrasings[e.task]
        if e.family == "story":
            assert e.combination[1] in story_names and e.output in story_answers
        if e.family == "span":  # every word was copied in training, never this sequence
            assert set(e.output.split()) <= span_words


def test_every_family_has_an_equal_share_of_dev_and_test(splits):
    for held_out in (splits.dev, splits.test):
        by_family = collections.Counter(e.family for e in held_out)
        assert set(by_family) == set(instructions.FAMILIES)
        assert set(by_family.values()) == {480 // len(instructions.FAMILIES)}
        assert {e.task for e in held_out} == {e.task for e in splits.train}
        # interleaved: any first N cover every family
        assert {e.family for e in held_out[:len(instructions.FAMILIES)]} == set(instructions.FAMILIES)


def test_a_span_answer_is_copied_from_the_input_and_no_candidate_is_it(splits):
    spans = [e for e in splits.dev + splits.test if e.family == "span"]
    assert spans
    for e in spans:
        assert f"said: {e.output}." in e.input and 2 <= len(e.output.split()) <= 4
        assert e.output not in e.candidates  # picking a word the prompt offers never answers it
    train_spans = {e.output for e in splits.train if e.family == "span"}
    assert not any(e.output in train_spans for e in spans)  # nothing to recall: copy or fail


def test_the_pick_from_the_prompt_baseline_is_what_the_tasks_allow(splits):
    def pick(examples):
        return sum((1 / len(e.candidates)) if e.output in e.candidates else 0.0 for e in examples) / len(examples)

    by_family = collections.defaultdict(list)
    for e in splits.test:
        by_family[e.family].append(e)
    assert pick(by_family["compare"]) == pytest.approx(0.5)
    assert pick(by_family["story"]) == pytest.approx(0.5)  # two colors, or two names
    assert pick(by_family["span"]) == 0.0 and pick(by_family["formats"]) == 0.0
    majority = instructions.most_common_answers(splits.train)
    assert set(majority) == {e.task for e in splits.train}


def test_generation_is_deterministic_and_seeded():
    first = instructions.generate_splits(300, 12, seed=5)
    again = instructions.generate_splits(300, 12, seed=5)
    other = instructions.generate_splits(300, 12, seed=6)
    assert first == again
    assert first != other


def test_family_weights_change_the_training_mix_only():
    uniform = instructions.generate_splits(1200, 12, seed=3)
    weighted = instructions.generate_splits(1200, 12, seed=3, family_weights={**instructions.FAMILY_WEIGHTS, "story": 3})
    share = {name: sum(e.family == "story" for e in splits.train) / len(splits.train)
             for name, splits in (("uniform", uniform), ("weighted", weighted))}
    assert share["uniform"] == pytest.approx(1 / 6, abs=0.04)
    assert share["weighted"] == pytest.approx(3 / 8, abs=0.05)
    assert (weighted.dev, weighted.test) == (uniform.dev, uniform.test)  # held-out splits never move
    # equal weights draw what a plain uniform choice of family drew
    rng = random.Random(3)
    plain = [e for e in (rng.choice(instructions.FAMILIES[rng.choice(list(instructions.FAMILIES))])(rng)
                         for _ in range(50))]
    rng = random.Random(3)
    assert [instructions.draw(rng, instructions.FAMILY_WEIGHTS) for _ in range(50)] == plain


def test_a_training_mix_reaches_the_dataset_through_the_source_options_and_a_bad_one_is_refused():
    story3 = {**instructions.FAMILY_WEIGHTS, "story": 3}
    options = SourceOptions(seed=3, size_mb=0.3, family_weights=story3)
    weighted, uniform = load_corpus("sample-instructions", options), load_corpus("sample-instructions", SourceOptions(
        seed=3, size_mb=0.3))
    assert weighted.details["train_family_weights"] == story3
    assert uniform.details["train_family_weights"] == instructions.FAMILY_WEIGHTS
    assert weighted.val_documents == uniform.val_documents  # dev keeps equal shares
    def story_share(corpus):
        texts = ["".join(text for text, _ in d.segments) for d in corpus.documents]
        return sum("Who has the" in t or "What color is" in t for t in texts) / len(texts)

    stories = [story_share(uniform), story_share(weighted)]
    assert stories[1] > stories[0]
    assert instructions.FAMILY_WEIGHTS == {family: 1 for family in instructions.FAMILIES}  # the default untouched
    for bad in ({**story3, "story": 0}, {"story": 2}, {**story3, "poems": 1}, {**story3, "story_reading": -1}):
        with pytest.raises(UserError, match="whole number of shares"):
            load_corpus("sample-instructions", SourceOptions(size_mb=0.3, family_weights=bad))


def test_a_training_aid_is_trained_on_never_held_out_and_never_shows_a_held_out_pairing():
    with_aid = instructions.generate_splits(2400, 12, seed=5,
                                            family_weights={**instructions.FAMILY_WEIGHTS, "story_reading": 2})
    plain = instructions.generate_splits(2400, 12, seed=5)
    aids = [e for e in with_aid.train if e.family == "story_reading"]
    # 2 shares of 8 drawn; ~64% of the aid's draws show only training pairings, ~80% of the others'
    assert len(aids) / len(with_aid.train) == pytest.approx(2 * 0.64 / (2 * 0.64 + 6 * 0.8), abs=0.04)
    assert not any(e.family == "story_reading" for e in plain.train)
    assert (with_aid.dev, with_aid.test) == (plain.dev, plain.test)  # held-out splits never move
    assert {e.task for e in aids} == {"what_has", "who_has"}
    held_out = {e.combination for e in plain.dev + plain.test if e.family == "story"}
    for e in aids:
        name, color, thing = (e.combination[2:5] if e.task == "what_has" else
                              (e.combination[3], e.combination[1], e.combination[2]))
        assert f"{name} has {world.article(color)} {color} {thing}." in e.input  # the answer is read from the story
        assert e.output in (name, f"{world.article(color)} {color} {thing}")
        assert all(instructions.split_of(c, 5) == "train" for c in e.reveals)
        assert not set(e.reveals) & held_out
    # drawn freely, some aids would show a held-out pairing: the filter is what keeps them out
    rng = random.Random(0)
    drawn = [instructions.story_reading(rng) for _ in range(300)]
    assert any(instructions.split_of(c, 5) != "train" for e in drawn for c in e.reveals)


def test_answers_are_right():
    train = instructions.generate_splits(2000, 6, seed=1).train
    for e in train:
        if e.task == "add":
            a, b = e.combination[2:]
            assert int(e.output) == a + b
        elif e.task == "last":
            assert e.output == e.input.split(", ")[-1]
        elif e.task == "table_row":
            assert e.output == "| " + " | ".join(part.split(": ")[1] for part in e.input.split(", ")) + " |"
        elif e.task == "color":
            assert f"{e.output} " in e.input
        elif e.task == "quote":
            assert e.input.endswith(f"said: {e.output}.")


def test_prepared_sample_instructions_store_held_out_examples(tmp_path):
    out = tmp_path / "instr"
    meta = prepare_dataset("sample-instructions", out, vocab_size=400, size_mb=0.05, log=None)
    assert meta["kind"] == "instructions" and meta["has_mask"]
    stored = instructions.held_out_examples(out)
    assert len(stored) == instructions.DEFAULT_VAL_EXAMPLES
    test = instructions.held_out_examples(out, "test")
    assert len(test) == instructions.DEFAULT_VAL_EXAMPLES
    assert not {e["prompt"] for e in test} & {e["prompt"] for e in stored}
    assert all("candidates" in e and e["most_common_answer"] for e in test)
    first = stored[0]
    assert first["prompt"].startswith(INSTRUCTION_HEADER + " ") and first["prompt"].endswith(RESPONSE_MARKER)
    # Without the file, the same examples are decoded from val.bin and its mask (lossless tokenizer).
    (out / instructions.VAL_EXAMPLES_FILE).unlink()
    decoded = instructions.held_out_examples(out)
    assert [(d["prompt"], d["response"]) for d in decoded] == [(s["prompt"], s["response"]) for s in stored]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_alpaca_and_chat_jsonl_become_masked_examples(tmp_path):
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Name a color.", "output": "red"},
        {"instruction": "Reverse the list.", "input": "a, b", "output": "b, a"},
    ])
    corpus = load_corpus(str(alpaca), SourceOptions())
    assert corpus.kind == "instructions"
    assert corpus.documents[1].segments == ((format_prompt("Reverse the list.", "a, b"), False), (" b, a", True))

    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Count to two."},
        {"role": "assistant", "content": "1, 2"},
    ]}])
    documents = load_corpus(str(chat), SourceOptions()).documents
    assert len(documents) == 2  # one example per assistant turn, each ending with its own EOS
    (prompt1, _), (target1, _) = documents[0].segments
    (prompt2, _), (target2, _) = documents[1].segments
    assert target1 == " Hello." and target2 == " 1, 2"
    assert prompt2.startswith(prompt1) and "Hello." in prompt2
    assert prompt2.endswith("Count to two.\n" + RESPONSE_MARKER)


@pytest.mark.parametrize("record, expected", [
    ({"instruction": "Say hi.", "output": 3}, "'output' is 3; it must be a string"),
    ({"instruction": " ", "output": "x"}, "empty 'instruction' or 'output'"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "each needs a 'role'"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
])
def test_bad_instruction_records_fail_clearly(tmp_path, capsys, record, expected):
    source = write_jsonl(tmp_path / "bad.jsonl", [record])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare", "--source", str(source), "--out", str(out), "--vocab-size", "300"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "line 1" in message and expected in message
    assert len(message.splitlines()) == 1
    assert not out.exists()


