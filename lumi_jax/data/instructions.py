"""Instruction data for fine-tuning: the `sample-instructions` source and instruction JSONL.

`sample-instructions` generates instruction/response pairs from six task families, all in the
words of the `sample` stories (their names, things, animals, foods and colors), with short,
systematic answers a ~6M model can learn:

    add          add 1 to 3 to a number up to 99
    compare      the bigger / smaller of two numbers to 19
    lists        the first or last item of a list, how many items it has
    story        questions answered by a two-sentence story: whose thing is it, what color
    formats      two fields ("name: Lily, pet: dog") to a table row ("| Lily | dog |")
    span         what someone said: a span of two to four random words, copied exactly; no
                 memorised fact answers it, and no single word the prompt offers is the answer

Answers of one to eight tokens: what a ~6M model fine-tuned for 15 minutes on a 2-core CPU can
learn (a first version with longer answers - reversed lists, JSON, bullet lists, subtraction,
neighbours of two-digit numbers - reached 3% in that budget). Answers keep each copied word
space-prefixed, as it is in the input (see the template in lumi_jax/data/template.py).

Three splits = UNSEEN COMBINATIONS. Every example has a *combination*: the pairing of parts it
tests, e.g. (add, phrasing 2, 3, 4) or (color question, Lily, red). A seeded hash sends about one
combination in ten to the dev split and one in ten to the test split; training never contains
either. The parts themselves (each phrasing, name, number, word) all occur in training, only
never in that pairing: a held-out question asks "Add 7 and 2." when training saw 7 + 2 only as
"What is 7 plus 2?", or asks the color of Lily's thing when training never answered a color
question about Lily with that color. Choices are made on dev (the dataset's validation split,
what `lumi sft` scores); test is scored once per final method (benchmarks/sft_accuracy.py).
Dev and test hold equal shares of every family, so no easy task dominates.

Each held-out record carries what a trivial answerer could do: the candidates the prompt itself
offers (the two numbers compared, the list's items, the story's colors or names), so the
pick-from-the-prompt baseline is exact, and the task's most common training answer.

Instruction JSONL (a `lumi prepare` path source): alpaca-style records
{"instruction", "input" (optional), "output"}, or chat records {"messages": [{"role", "content"},
...]}; a chat gives one example per assistant turn (see lumi_jax/data/template.py for the template).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
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
DEFAULT_VAL_EXAMPLES = 480  # per held-out split: 80 per family
HELD_OUT_PER_MILLE = 100  # about one combination in ten goes to dev, one in ten to test
APPROX_BYTES_PER_EXAMPLE = 120  # for --size-mb: examples = size / this
VAL_EXAMPLES_FILE = "val_examples.jsonl"  # the dev split's examples
TEST_EXAMPLES_FILE = "test_examples.jsonl"


@dataclasses.dataclass(frozen=True)
class Example:
    family: str
    task: str
    instruction: str
    input: str
    output: str
    combination: tuple  # what the held-out splits pair in a new way; a function of the prompt
    candidates: tuple[str, ...] = ()  # the answers the prompt itself offers (a trivial answerer's pick)
    # other families' combinations this example's answer also shows (a training aid's): it is kept
    # for training only when every one of them is a training combination too
    reveals: tuple[tuple, ...] = ()

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
# Arithmetic stays within rules a tiny model can find: a step of 1 to 3 added to a number up to
# 99 (digit by digit, with a carry now and then; 900 phrased facts, so that dev and test can each
# hold 80 distinct ones), comparisons up to 19.
LARGEST_ADDEND = 99
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
    a, b = rng.randint(0, LARGEST_ADDEND), rng.randint(1, LARGEST_STEP)
    index, text = _phrasing(rng, ADD)
    return Example("add", "add", text.format(a=a, b=b), "", str(a + b), ("add", index, a, b), (str(a), str(b)))


def compare(rng):
    a = rng.randint(0, LARGEST_COMPARED)
    b = _pick(rng, range(LARGEST_COMPARED + 1), exclude=(a,))
    task, phrasings, answer = rng.choice([("bigger", BIGGER, max(a, b)), ("smaller", SMALLER, min(a, b))])
    index, text = _phrasing(rng, phrasings)
    return Example("compare", task, text.format(a=a, b=b), "", str(answer), (task, index, a, b), (str(a), str(b)))


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
    return Example("lists", task, text, ", ".join(items), output, (task, index, *key), tuple(items))


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
        combination, candidates = ("color", name, answer), tuple(colors)
    else:
        question, answer = f"Who has the {things[asked]}?", name
        combination, candidates = ("owner", things[asked], name), (first, second)
    return Example("story", task, question, story, answer, combination, candidates)


READING = ["What does {name} have?", "What has {name} got?"]


def story_reading(rng):
    """A training aid for the story family, never held out: the same two-sentence stories, asked
    for a whole phrase ("What does Noor have?" → "a red ball"), or for the owner of a thing named
    with its colour ("Who has the red ball?"). Its answers show a name with its colour and its
    thing at once, so it is kept only where both of the story questions' pairings are training ones."""
    first, second = rng.sample(NAMES, 2)
    asked = rng.randrange(2)
    name = (first, second)[asked]
    colors, things = rng.sample(COLORS, 2), rng.sample(THINGS, 2)
    color, thing = colors[asked], things[asked]
    story = (f"{first} has {world.article(colors[0])} {colors[0]} {things[0]}. "
             f"{second} has {world.article(colors[1])} {colors[1]} {things[1]}.")
    pairings = (("color", name, color), ("owner", thing, name))
    if rng.randrange(2):
        index, text = _phrasing(rng, READING)
        return Example("story_reading", "what_has", text.format(name=name), story,
                       f"{world.article(color)} {color} {thing}", ("what_has", index, *pairings[0][1:], thing),
                       reveals=pairings)
    return Example("story_reading", "who_has", f"Who has the {color} {thing}?", story, name,
                   ("who_has", color, thing, name), reveals=pairings)


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


QUOTE = ["What did {name} say?", "Repeat what {name} said."]
SPAN_WORDS = sorted(set(ITEMS + COLORS))


def span_task(rng):
    """Someone says two to four random story words; the answer is exactly what they said. The
    combination is the words themselves: a held-out span has never been seen in training."""
    name, other = rng.sample(NAMES, 2)
    said = [rng.choice(SPAN_WORDS) for _ in range(rng.randint(2, 4))]
    index, text = _phrasing(rng, QUOTE)
    story = f"{name} looked at {other} and said: {' '.join(said)}."
    return Example("span", "quote", text.format(name=name), story, " ".join(said), ("quote", *said),
                   tuple(dict.fromkeys(said)))  # single words: never the whole span


FAMILIES: dict[str, list[Callable[[random.Random], Example]]] = {
    "add": [add],
    "compare": [compare],
    "lists": [list_task],
    "story": [story_question],
    "formats": [format_task],
    "span": [span_task],
}


# ---------------------------------------------------------------------------------------------
# The split.


def split_of(combination: tuple, seed: int) -> str:
    """"train", "dev" or "test": a stable hash (not Python's salted hash()) of the combination and the seed."""
    digest = hashlib.sha256(json.dumps([seed, *combination]).encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 1000
    return "test" if bucket < HELD_OUT_PER_MILLE else "dev" if bucket < 2 * HELD_OUT_PER_MILLE else "train"


# Families only a training mix may hold: never in dev or test, no baselines (a method's choice).
TRAINING_AIDS: dict[str, list[Callable[[random.Random], Example]]] = {
    "story_reading": [story_reading],
}

# How many shares of the training examples each family gets (dev and test keep equal shares).
# Equal shares draw the same stream as a plain uniform choice, so a seed's dataset is unchanged.
FAMILY_WEIGHTS: dict[str, int] = {family: 1 for family in FAMILIES}


def draw(rng: random.Random, family_weights: dict[str, int]) -> Example:
    generators = FAMILIES | TRAINING_AIDS
    pool = [family for family in generators for _ in range(family_weights.get(family, 0))]
    family = rng.choice(pool)
    return rng.choice(generators[family])(rng)


def for_training(example: Example, seed: int) -> bool:
    """A family's example trains when its combination is a training one; a training aid's (never
    held out itself) when every pairing its answer shows is."""
    return all(split_of(combination, seed) == "train" for combination in (example.reveals or (example.combination,)))


@dataclasses.dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]


def generate_splits(train_count: int, held_out_count: int, seed: int,
                    family_weights: Mapping[str, int] | None = None) -> Splits:
    """Training, dev and test examples: disjoint combinations, each split its own stream.

    Training examples may repeat (a fact worth seeing twice); dev and test examples are distinct
    prompts, in equal shares of every family, interleaved (any first N cover them all).
    """
    if train_count < 1 or held_out_count < len(FAMILIES):
        raise UserError(f"asked for {train_count} training and {held_out_count} held-out examples; "
                        f"use at least 1 and {len(FAMILIES)} (--size-mb larger)")
    weights = FAMILY_WEIGHTS if family_weights is None else dict(family_weights)
    families_ok = set(FAMILIES) <= set(weights) <= set(FAMILIES) | set(TRAINING_AIDS)
    shares_ok = all(isinstance(w, int) and w >= (0 if family in TRAINING_AIDS else 1) for family, w in weights.items())
    if not (families_ok and shares_ok):
        raise UserError(f"family weights {weights} must give every family of {sorted(FAMILIES)} a whole number "
                        f"of shares, at least 1 (and a training aid of {sorted(TRAINING_AIDS)}, if any, 0 or more)")
    rng = random.Random(seed)
    train: list[Example] = []
    while len(train) < train_count:
        example = draw(rng, weights)
        if for_training(example, seed):
            train.append(example)
    held_out = {name: held_out_split(name, held_out_count, seed, stream)
                for stream, name in ((1_000_003, "dev"), (2_000_003, "test"))}
    return Splits(train, held_out["dev"], held_out["test"])


def held_out_split(name: str, count: int, seed: int, stream: int) -> list[Example]:
    rng = random.Random(seed + stream)
    per_family = {family: count // len(FAMILIES) + (i < count % len(FAMILIES)) for i, family in enumerate(FAMILIES)}
    chosen_examples: list[Example] = []
    seen_prompts: set[str] = set()
    for family, wanted in per_family.items():
        chosen = 0
        for _attempt in range(wanted * 2000):
            if chosen == wanted:
                break
            example = rng.choice(FAMILIES[family])(rng)
            if split_of(example.combination, seed) == name and example.prompt not in seen_prompts:
                seen_prompts.add(example.prompt)
                chosen_examples.append(example)
                chosen += 1
        else:
            raise AssertionError(f"could not draw {wanted} {name} examples of {family}")
    return interleave_families(chosen_examples)


def most_common_answers(examples: Sequence[Example]) -> dict[str, str]:
    """Each task's most common training answer: what a trivial answerer that ignores the input says."""
    counts: dict[str, dict[str, int]] = {}
    for example in examples:
        by_answer = counts.setdefault(example.task, {})
        by_answer[example.output] = by_answer.get(example.output, 0) + 1
    return {task: max(by_answer, key=lambda answer: (by_answer[answer], answer)) for task, by_answer in counts.items()}


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
    weights = dict(FAMILY_WEIGHTS if options.family_weights is None else options.family_weights)
    splits = generate_splits(train_count, DEFAULT_VAL_EXAMPLES, options.seed, family_weights=weights)
    return Corpus(
        documents=[e.to_document() for e in splits.train],
        kind="instructions",
        source=f"sample-instructions(examples={train_count}, seed={options.seed})",
        val_documents=[e.to_document() for e in splits.dev],
        details={"generator": "lumi_jax.data.instructions", "families": list(FAMILIES),
                 "train_family_weights": weights,
                 "held_out": f"unseen combinations: about {HELD_OUT_PER_MILLE / 10:g}% of them in dev (the "
                             f"validation split), as many in test ({TEST_EXAMPLES_FILE})",
                 "train_examples": len(splits.train), "val_examples": len(splits.dev),
                 "test_examples": len(splits.test)},
        write_extra_files=lambda directory, _train, _val: _write_held_out_examples(directory, splits),
    )


def held_out_record(example: Example, majority: dict[str, str]) -> dict:
    return {"prompt": example.prompt, "response": example.output, "family": example.family, "task": example.task,
            "candidates": list(example.candidates), "most_common_answer": majority.get(example.task, "")}


def _write_held_out_examples(directory: Path, splits: Splits) -> dict:
    majority = most_common_answers(splits.train)
    for name, file_name in (("dev", VAL_EXAMPLES_FILE), ("test", TEST_EXAMPLES_FILE)):
        write_val_examples(directory / file_name, [held_out_record(e, majority) for e in getattr(splits, name)])
    return {"val_examples_file": VAL_EXAMPLES_FILE, "test_examples_file": TEST_EXAMPLES_FILE}


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


def held_out_examples(dataset_dir: str | Path, split: str = "dev") -> list[dict]:
    """The held-out examples of an instruction dataset: dicts with "prompt" and "response" (and,
    for sample-instructions, "family", "task", "candidates" and "most_common_answer"). `split`:
    "dev" (the validation split: read from val_examples.jsonl when `lumi prepare` wrote one, else
    decoded from val.bin and its mask, for any instruction dataset) or "test" (sample-instructions
    only, test_examples.jsonl)."""
    dataset = TokenDataset(dataset_dir)
    if dataset.meta["kind"] != "instructions":
        raise UserError(f"{dataset_dir}: is a {dataset.meta['kind']} dataset, not instructions; prepare one with "
                        f"`lumi prepare --source sample-instructions --out DIR --tokenizer runs/X/tokenizer.model`")
    if split == "test":
        path = Path(dataset_dir) / TEST_EXAMPLES_FILE
        if not path.is_file():
            raise UserError(f"{dataset_dir}: has no test split ({TEST_EXAMPLES_FILE}); prepare sample-instructions "
                            "again (with --force) to get one")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
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
