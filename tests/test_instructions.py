"""The sample-instructions generator (held-out unseen combinations) and instruction JSONL reading."""

from __future__ import annotations

import collections
import json

import pytest

from lumi_jax import cli
from lumi_jax.data import instructions
from lumi_jax.data.catalog import load_corpus
from lumi_jax.data.prepare import prepare_dataset
from lumi_jax.data.sources import SourceOptions
from lumi_jax.data.template import INSTRUCTION_HEADER, RESPONSE_MARKER, format_prompt


@pytest.fixture(scope="module")
def split():
    return instructions.generate_split(instructions.DEFAULT_TRAIN_EXAMPLES, 400, seed=0)  # the default dataset


def test_held_out_combinations_never_occur_in_training(split):
    train, val = split
    train_combinations = {e.combination for e in train}
    train_prompts = {e.prompt for e in train}
    assert all(instructions.is_held_out(e.combination, 0) for e in val)
    assert not any(e.combination in train_combinations for e in val)
    assert not any(e.prompt in train_prompts for e in val)
    assert len({e.prompt for e in val}) == len(val)  # distinct held-out questions, not repeats


def test_held_out_parts_are_all_seen_in_training(split):
    """Unseen *combinations* of seen parts: each held-out phrasing and each held-out fact or answer
    word occurs in training, only never in that pairing."""
    train, val = split
    phrasings = collections.defaultdict(set)
    for e in train:
        phrasings[e.task].add(e.combination[1] if e.family == "arithmetic" else e.instruction.split()[0])
    add_facts = {(e.combination[2], e.combination[3]) for e in train if e.task == "add"}
    story_names = {e.combination[1] for e in train if e.family == "story"}
    story_answers = {e.output for e in train if e.family == "story"}
    for e in val:
        if e.family == "arithmetic":
            assert e.combination[1] in phrasings[e.task]
        if e.task == "add":  # the same sum was asked in training, in another phrasing
            assert (e.combination[2], e.combination[3]) in add_facts
        if e.family == "story":
            assert e.combination[1] in story_names and e.output in story_answers


def test_every_family_and_task_is_held_out_and_trained(split):
    train, val = split
    val_by_family = collections.Counter(e.family for e in val)
    assert set(val_by_family) == set(instructions.FAMILIES)
    assert min(val_by_family.values()) == 100
    assert {e.task for e in val} == {e.task for e in train}


def test_generation_is_deterministic_and_seeded():
    first = instructions.generate_split(300, 8, seed=5)
    again = instructions.generate_split(300, 8, seed=5)
    other = instructions.generate_split(300, 8, seed=6)
    assert first == again
    assert first != other


def test_answers_are_right():
    train, _ = instructions.generate_split(2000, 4, seed=1)
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


def test_prepared_sample_instructions_store_held_out_examples(tmp_path):
    out = tmp_path / "instr"
    meta = prepare_dataset("sample-instructions", out, vocab_size=400, size_mb=0.05, log=None)
    assert meta["kind"] == "instructions" and meta["has_mask"]
    stored = instructions.held_out_examples(out)
    assert len(stored) == instructions.DEFAULT_VAL_EXAMPLES
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


def test_any_first_held_out_examples_cover_every_family(split):
    _, val = split
    assert {e.family for e in val[:len(instructions.FAMILIES)]} == set(instructions.FAMILIES)
