"""Why fine-tuned models miss the story family (issue 17): can they answer story questions at all?

    .venv/bin/python benchmarks/story_diagnosis.py RUN [RUN ...] --instructions DATA [--examples 80] [--out FILE]

For each fine-tuned run, greedy answers to story questions from two pools:
- `dev`: the dataset's dev split (unseen combinations of name, color or thing and answer);
- `seen`: fresh story questions whose combinations are in the training split (generated with the
  dataset's seed; the pairing was trained on, though not necessarily this exact story).
Each answer is `right`, `other_candidate` (the other name or color the story offers) or
`not_in_prompt`, per task (color, owner). A model that reads the story scores near 100% on both
pools; one that memorised the training pairings scores high on `seen` only; one that picks among
the prompt's words scores ~50% on both. Writes benchmarks/results/story_diagnosis.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi_jax.data import instructions  # noqa: E402
from lumi_jax.data.instructions import held_out_examples  # noqa: E402
from lumi_jax.generate import generate_ids  # noqa: E402
from lumi_jax.runs import load_run  # noqa: E402

POOL_SEED = 123  # the draw of the `seen` pool; any seed gives the same kind of questions


def seen_pool(count: int, dataset_seed: int) -> list[dict]:
    rng, pool = random.Random(POOL_SEED), []
    while len(pool) < count:
        example = instructions.story_question(rng)
        if instructions.split_of(example.combination, dataset_seed) == "train":
            pool.append({"prompt": example.prompt, "response": example.output, "task": example.task,
                         "candidates": list(example.candidates)})
    return pool


def classify(run_dir: Path, examples: list[dict]) -> dict:
    run = load_run(run_dir)
    prompts = [run.tokenizer.encode(e["prompt"], bos=True) for e in examples]
    results = generate_ids(run.model_config, run.params, prompts, max_new_tokens=8)
    counts: dict[str, collections.Counter] = {}
    absent: list[dict] = []
    for example, result in zip(examples, results, strict=True):
        answer = run.tokenizer.decode(result.new_ids).strip()
        kind = ("right" if answer == example["response"].strip() else
                "other_candidate" if answer in example["candidates"] else "not_in_prompt")
        counts.setdefault(example["task"], collections.Counter())[kind] += 1
        if kind == "not_in_prompt":
            absent.append({"answer": answer, "expected": example["response"].strip(), "task": example["task"],
                           "piece_of_a_candidate": any(answer and answer != c and answer in c
                                                       for c in example["candidates"]),
                           "expected_tokens": len(run.tokenizer.encode(" " + example["response"].strip()))})
    by_task = {task: dict(sorted(c.items())) | {"accuracy": round(c["right"] / sum(c.values()), 3)}
               for task, c in sorted(counts.items())}
    right = sum(c["right"] for c in counts.values())
    # Is an answer absent from the story a broken-up rare word (the tokenizer's pieces of a name)?
    absent_summary = {"count": len(absent),
                      "piece_of_a_candidate": sum(a["piece_of_a_candidate"] for a in absent),
                      "expected_answer_is_several_tokens": sum(a["expected_tokens"] > 1 for a in absent),
                      "samples": absent[:8]}
    return {"accuracy": round(right / len(examples), 3), "examples": len(examples), "by_task": by_task,
            "not_in_prompt_answers": absent_summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="fine-tuned run directories")
    parser.add_argument("--instructions", type=Path, required=True, help="the sample-instructions dataset they used")
    parser.add_argument("--examples", type=int, default=80, help="questions in the `seen` pool")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "story_diagnosis.json")
    args = parser.parse_args()

    meta = json.loads((args.instructions / "meta.json").read_text())
    dataset_seed = meta.get("seed", 0)
    pools = {"dev": [e for e in held_out_examples(args.instructions, "dev") if e["family"] == "story"],
             "seen": seen_pool(args.examples, dataset_seed)}
    # How many tokens each story word takes with the runs' tokenizer (a name is read as " Name").
    tokenizer = load_run(args.runs[0]).tokenizer
    pieces = {kind: collections.Counter(len(tokenizer.encode(" " + word)) for word in words)
              for kind, words in (("names", instructions.NAMES), ("colors", instructions.COLORS),
                                  ("things", instructions.THINGS))}
    result = {
        "benchmark": "story_diagnosis",
        "tokens_per_word_of_the_first_runs_tokenizer": {kind: {str(n): c for n, c in sorted(counter.items())}
                                                        for kind, counter in pieces.items()},
        "command": " ".join(["story_diagnosis.py", *sys.argv[1:]]),
        "instructions": str(args.instructions), "dataset_seed": dataset_seed,
        "runs": {str(run): {pool: classify(run, examples) for pool, examples in pools.items()} for run in args.runs},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for run, pools_scored in result["runs"].items():
        print(run, {pool: scored["accuracy"] for pool, scored in pools_scored.items()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
