"""Instruction data for fine-tuning: the `sample-instructions` source and instruction JSONL.

`sample-instructions` generates instruction/response pairs from four task families, all in the
words of the `sample` stories (their names, things, animals, foods and colors), with short,
systematic answers a ~6M model can learn:

    arithmetic   add 1 to 3 to a digit, the bigger / smaller of two numbers to 19
    lists        the first or last item of a list, how many items it has
    story world  questions answered by a two-sentence story: whose thing is it, what color
    formats      two fields ("name: Lily, pet: dog") to a table row ("| Lily | dog |")

Nine tasks with answers of one to eight tokens: what a ~6M model fine-tuned for 15 minutes on
a 2-core CPU can learn (a first version with longer answers - reversed lists, JSON, bullet
lists, subtraction, neighbours of two-digit numbers - reached 3% in that budget). Answers keep
each copied word space-prefixed, as it is in the input (see the template in lumi_jax/data/template.py).

Held-out split = UNSEEN COMBINATIONS. Every example has a *combination*: the pairing of parts
it tests, e.g. (add, phrasing 2, 3, 4) or (color question, Lily, red). A seeded hash puts about
one combination in ten aside; the training split never contains a set-aside combination, the
held-out split contains nothing else. The parts themselves (each phrasing, name, number, word)
all occur in training, only never in that pairing: a held-out question asks "Add 7 and 2." when
training saw 7 + 2 only as "What is 7 plus 2?", or asks the color of Lily's thing when training
never answered a color question about Lily with that color.

Instruction JSONL (a `lumi prepare` path source): alpaca-style records
{"instruction", "input" (optional), "output"}, or chat records {"messages": [{"role", "content"},
...]}; a chat gives one example per assistant turn (see lumi_jax/data/template.py for the template).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lumi_jax.data import sample_corpus as world
from lumi_jax.data.loader import TokenDataset
from lumi_jax.data.sources import (
    Corpus,
    Document,
    SourceOptions,
)
from lumi_jax.data.template import CHAT_ROLES, chat_examples, format_example, format_prompt
from lumi_jax.data.tokenizer import BOS_ID, Tokenizer
from lumi_jax.errors import UserError

DEFAULT_TRAIN_EXAMPLES = 30_000
DEFAULT_VAL_EXAMPLES = 400
HELD_OUT_PER_MILLE = 100  # about one combination in ten is set aside for the held-out split
APPROX_BYTES_PER_EXAMPLE = 120  # for --size-mb: examples = size / this
VAL_EXAMPLES_FILE = "val_examples.jsonl"


@dataclasses.dataclass(frozen=True)
class Example:
    family: str
    task: str
    instruction: str
    input: str
    output: str
    combination: tuple  # what the held-out split pairs in a new way; a function of the prompt

    @property
    def prompt(self) -> str:
        return format_prompt(self.instruction, self.input)

    def to_document(self) -> Document:
        prompt, target = format_example(self.instruction, self.input, self.output)
        return Document(((prompt, False), (target, True)))


# ---------------------------------------------------------------------------------------------
# The story world's words (single words only, so list items stay one item per comma).

NAMES = world.GIRL_NAMES + world.BOY_NAMES
COLORS = world.COLORS
THINGS = [t for t in world.THINGS if " " not in t]
ITEMS = THINGS + world.ANIMALS + world.FOODS
# Arithmetic stays within a fact table a tiny model can hold and rules it can find: sums of a
# digit and a step of 1 to 3, comparisons up to 19, neighbours of two-digit numbers.
LARGEST_DIGIT = 9
LARGEST_STEP = 3
LARGEST_COMPARED = 19


def _pick(rng: random.Random, options: Sequence, exclude=()) -> object:
    while True:
        choice = options[rng.randrange(len(options))]
        if choice not in exclude:
            return choice


def _phrasing(rng: random.Random, phrasings: Sequence[str]) -> tuple[int, str]:
    index = rng.randrange(len(phrasings))
    return index, phrasings[index]


# ---------------------------------------------------------------------------------------------
# The task generators: each draws one Example from `rng`.

ADD = ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."]
BIGGER = ["Which is bigger, {a} or {b}?", "Give the larger number: {a} or {b}."]
SMALLER = ["Which is smaller, {a} or {b}?", "Give the smaller number: {a} or {b}."]


def add(rng):
    a, b = rng.randint(0, LARGEST_DIGIT), rng.randint(1, LARGEST_STEP)
    index, text = _phrasing(rng, ADD)
    return Example("arithmetic", "add", text.format(a=a, b=b), "", str(a + b), ("add", index, a, b))


def compare(rng):
    a = rng.randint(0, LARGEST_COMPARED)
    b = _pick(rng, range(LARGEST_COMPARED + 1), exclude=(a,))
    task, phrasings, answer = rng.choice([("bigger", BIGGER, max(a, b)), ("smaller", SMALLER, min(a, b))])
    index, text = _phrasing(rng, phrasings)
    return Example("arithmetic", task, text.format(a=a, b=b), "", str(answer), (task, index, a, b))


LIST_TASKS = {  # task -> (phrasings, answer from the items)
    "first": (["What is the first item?", "Give the first item of the list."], lambda items: items[0]),
    "last": (["What is the last item?", "Give the last item of the list."], lambda items: items[-1]),
    "count": (["How many items are in the list?", "Count the items."], lambda items: str(len(items))),
}


def list_task(rng):
    task = rng.choice(list(LIST_TASKS))
    phrasings, answer = LIST_TASKS[task]
    items = rng.sample(ITEMS, rng.randint(2, 5))
    index, text = _phrasing(rng, phrasings)
    output = answer(items)
    # first/last: never this phrasing answered with this item; count: never this list.
    key = (output,) if task in ("first", "last") else tuple(items)
    return Example("lists", task, text, ", ".join(items), output, (task, index, *key))


def story_question(rng):
    """Two characters, one fact each; the question asks about one of them."""
    first, second = rng.sample(NAMES, 2)
    asked = rng.randrange(2)
    name = (first, second)[asked]
    task = rng.choice(["color", "owner"])
    colors, things = rng.sample(COLORS, 2), rng.sample(THINGS, 2)
    story = (f"{first} has {world.article(colors[0])} {colors[0]} {things[0]}. "
             f"{second} has {world.article(colors[1])} {colors[1]} {things[1]}.")
    if task == "color":
        question, answer = f"What color is {name}'s {things[asked]}?", colors[asked]
        combination = ("color", name, answer)
    else:
        question, answer = f"Who has the {things[asked]}?", name
        combination = ("owner", things[asked], name)
    return Example("story", task, question, story, answer, combination)


FIELDS = {  # field -> values
    "name": NAMES,
    "age": [str(n) for n in range(3, 13)],
    "pet": world.ANIMALS,
    "color": COLORS,
    "food": world.FOODS,
}
TABLE_ROW = ["Write the fields as a table row.", "Convert the fields to a table row."]


def format_task(rng):
    keys = ["name", rng.choice(["age", "pet", "color", "food"])]
    values = [_pick(rng, FIELDS[key]) for key in keys]
    fields_text = ", ".join(f"{key}: {value}" for key, value in zip(keys, values, strict=True))
    output = "| " + " | ".join(values) + " |"
    index, text = _phrasing(rng, TABLE_ROW)
    # never this phrasing with this name and this second field value
    return Example("formats", "table_row", text, fields_text, output, ("table_row", index, values[0], keys[1], values[1]))


FAMILIES: dict[str, list[Callable[[random.Random], Example]]] = {
    "arithmetic": [add, compare],
    "lists": [list_task],
    "story": [story_question],
    "formats": [format_task],
}


# ---------------------------------------------------------------------------------------------
# The split.


def is_held_out(combination: tuple, seed: int) -> bool:
    """A stable hash (not Python's salted hash()) of the combination and the seed."""
    digest = hashlib.sha256(json.dumps([seed, *combination]).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELD_OUT_PER_MILLE


def draw(rng: random.Random) -> Example:
    family = rng.choice(list(FAMILIES))
    return rng.choice(FAMILIES[family])(rng)


def generate_split(train_count: int, val_count: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples): disjoint combinations, each split its own stream.

    Training examples may repeat (a fact worth seeing twice); held-out examples are distinct
    prompts, spread evenly over the four families and interleaved (any first N cover them all).
    """
    if train_count < 1 or val_count < len(FAMILIES):
        raise UserError(f"asked for {train_count} training and {val_count} held-out examples; "
                        f"use at least 1 and {len(FAMILIES)} (--size-mb larger)")
    rng = random.Random(seed)
    train: list[Example] = []
    while len(train) < train_count:
        example = draw(rng)
        if not is_held_out(example.combination, seed):
            train.append(example)

    val_rng = random.Random(seed + 1_000_003)
    per_family = {family: val_count // len(FAMILIES) + (i < val_count % len(FAMILIES))
                  for i, family in enumerate(FAMILIES)}
    val: list[Example] = []
    seen_prompts: set[str] = set()
    for family, count in per_family.items():
        chosen = 0
        for _attempt in range(count * 2000):
            if chosen == count:
                break
            example = val_rng.choice(FAMILIES[family])(val_rng)
            if is_held_out(example.combination, seed) and example.prompt not in seen_prompts:
                seen_prompts.add(example.prompt)
                val.append(example)
                chosen += 1
        else:
            raise AssertionError(f"could not draw {count} held-out {family} examples")
    return train, interleave_families(val)


def interleave_families(examples: list[Example]) -> list[Example]:
    """Round-robin over the families, so that any first N held-out examples cover them all."""
    by_family: dict[str, list[Example]] = {}
    for example in examples:
        by_family.setdefault(example.family, []).append(example)
    queues = list(by_family.values())
    ordered = []
    for index in range(max(map(len, queues))):
        ordered.extend(queue[index] for queue in queues if index < len(queue))
    return ordered


def load_sample_instructions(spec: str, options: SourceOptions) -> Corpus:
    if options.size_mb is not None and not 0 < options.size_mb <= 200:
        raise UserError(f"--size-mb is {options.size_mb}; use a size between 0 and 200 (MB) for sample-instructions")
    train_count = (DEFAULT_TRAIN_EXAMPLES if options.size_mb is None
                   else max(1, int(options.size_mb * 1e6 / APPROX_BYTES_PER_EXAMPLE)))
    train, val = generate_split(train_count, DEFAULT_VAL_EXAMPLES, options.seed)
    return Corpus(
        documents=[e.to_document() for e in train],
        kind="instructions",
        source=f"sample-instructions(examples={train_count}, seed={options.seed})",
        val_documents=[e.to_document() for e in val],
        details={"generator": "lumi_jax.data.instructions", "families": list(FAMILIES),
                 "held_out": f"unseen combinations, about {HELD_OUT_PER_MILLE / 10:g}% of them",
                 "train_examples": len(train), "val_examples": len(val)},
        write_extra_files=lambda directory, _train, _val: _write_sample_val_examples(directory, val),
    )


def _write_sample_val_examples(directory: Path, val: Sequence[Example]) -> dict:
    records = [{"prompt": e.prompt, "response": e.output, "family": e.family, "task": e.task} for e in val]
    write_val_examples(directory / VAL_EXAMPLES_FILE, records)
    return {"val_examples_file": VAL_EXAMPLES_FILE}


# ---------------------------------------------------------------------------------------------
# Instruction JSONL records.


def alpaca_record(record: dict) -> Document | None:
    """{"instruction", "input" (optional), "output"} -> one example; None when not this shape."""
    if "instruction" not in record or "output" not in record:
        return None
    fields = {name: record.get(name, "") for name in ("instruction", "input", "output")}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise UserError(f"an instruction record's '{name}' is {json.dumps(value)[:40]}; it must be a string")
    if not fields["instruction"].strip() or not fields["output"].strip():
        raise UserError("an instruction record has an empty 'instruction' or 'output'; fill it in or remove the record")
    prompt, target = format_example(fields["instruction"], fields["input"], fields["output"])
    return Document(((prompt, False), (target, True)))


def chat_record(record: dict) -> list[Document] | None:
    """{"messages": [{"role", "content"}, ...]} -> one example per assistant turn."""
    messages = record.get("messages")
    if messages is None:
        return None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise UserError("a chat record's 'messages' must be a list of {\"role\": ..., \"content\": ...} objects")
    for message in messages:
        if message.get("role") not in CHAT_ROLES or not isinstance(message.get("content"), str):
            raise UserError(f"a chat message is {json.dumps(message)[:60]}; each needs a 'role' (one of "
                            f"{', '.join(CHAT_ROLES)}) and a string 'content'")
    examples = chat_examples(messages)
    if not examples:
        raise UserError("a chat record has no assistant turn to learn from; add one or remove the record")
    return [Document(((prompt, False), (target, True))) for prompt, target in examples]




# ---------------------------------------------------------------------------------------------
# Held-out examples for exact-match evaluation.


def document_example(document: Document) -> dict:
    """{"prompt", "response"} of an instruction document (context segments, then targets)."""
    prompt = "".join(text for text, is_target in document.segments if not is_target)
    response = "".join(text for text, is_target in document.segments if is_target)
    return {"prompt": prompt, "response": response.strip()}


def write_val_examples(path: Path, records: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def held_out_examples(dataset_dir: str | Path) -> list[dict]:
    """The held-out examples of an instruction dataset: dicts with "prompt" and "response" (and,
    for sample-instructions, "family" and "task"). Read from val_examples.jsonl when `lumi
    prepare` wrote one, else decoded from val.bin and its mask (any instruction dataset)."""
    dataset = TokenDataset(dataset_dir)
    if dataset.meta["kind"] != "instructions":
        raise UserError(f"{dataset_dir}: is a {dataset.meta['kind']} dataset, not instructions; prepare one with "
                        f"`lumi prepare --source sample-instructions --out DIR --tokenizer runs/X/tokenizer.model`")
    path = Path(dataset_dir) / VAL_EXAMPLES_FILE
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return decode_examples(dataset, "val")


def decode_examples(dataset, split_name: str) -> list[dict]:
    """Split a packed instruction split back into examples: BOS, prompt (mask 0), response (mask 1), EOS."""
    split = dataset.split(split_name)
    if split.mask is None:
        raise UserError(f"{dataset.path}: the {split_name} split has no loss mask; prepare it again as instruction data")
    tokenizer = Tokenizer.load(dataset.tokenizer_path)
    tokens = np.asarray(split.tokens, dtype=np.int64)
    mask = np.asarray(split.mask, dtype=bool)
    starts = np.flatnonzero(tokens == BOS_ID)
    ends = np.append(starts[1:], len(tokens))
    examples = []
    for start, end in zip(starts, ends, strict=True):
        ids, targets = tokens[start + 1:end - 1], mask[start + 1:end - 1]  # without BOS and EOS
        examples.append({"prompt": tokenizer.decode(ids[~targets]), "response": tokenizer.decode(ids[targets]).strip()})
    return examples
