"""Fine-tuning measured by a protocol (issue 17): seeds, a dev split for choices, a test split
scored once, and every family next to its trivial baselines and the pretrained-only model.

    .venv/bin/python benchmarks/sft_accuracy.py --method shipped --seeds 0 1 2 --split dev
    .venv/bin/python benchmarks/sft_accuracy.py --method shipped --seeds 0 1 2 --split test   # once, at the end

For each seed (data order, initialisation, fine-tuning):
1. `lumi prepare --source sample` (the generated stories, the tiny shape's vocabulary), once;
2. pretrain `tiny` as `make session-prototype` does (config/recipes/prototype.json, with its copy
   warm-up and the WSD schedule a session's budget gives it; `--pretrain copy-free` drops the warm-up and gives its time to the stories;
   `--pretrain recall` makes half of the warm-up's rows key-value recall, copy_warmup.recall_rows), with the
   seed, into runs/<name>_pre-<pretrain>-s<seed>;
3. `lumi prepare --source sample-instructions` with that tokenizer (train / dev / test splits of
   unseen combinations, equal shares of six families), once;
4. fine-tune by `--method`: `shipped` is what `lumi sft` and `make sft` do (config/recipes/sft.json);
   `attempt15` is the longest measured method (1000 steps of 16 × 128 at lr 3e-3); `story3` and
   `story_reading` change the training mix (TRAIN_FAMILY_WEIGHTS);
5. greedy exact match of the pretrained and the fine-tuned model on every example of `--split`.

Each stage reuses what an earlier invocation finished (the runs are resumable), so seeds and
methods can be added one at a time. The result file, benchmarks/results/sft_protocol.json, is
rewritten whole from the run directories named in it: per seed, the mean and the spread (min,
max) over seeds, per family next to the pick-from-the-prompt and most-common-answer baselines.
`--pretrain-steps` and `--sft-steps` shorten a measurement; the file records them, and a shortened
measurement is not the shipped path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi_jax.config import load_model_config, load_train_config  # noqa: E402
from lumi_jax.data import instructions  # noqa: E402
from lumi_jax.data.instructions import held_out_examples  # noqa: E402
from lumi_jax.data.prepare import prepare_dataset  # noqa: E402
from lumi_jax.evaluate import exact_match  # noqa: E402
from lumi_jax.runs import load_run  # noqa: E402
from lumi_jax.sft import fine_tune  # noqa: E402
from lumi_jax.train import train  # noqa: E402

RESULT = REPO_ROOT / "benchmarks" / "results" / "sft_protocol.json"
RECALL_SHARE = 0.5  # --pretrain recall: the copy warm-up's rows that are key-value recall
METHODS = {  # name -> changes to config/recipes/sft.json
    "shipped": {},
    "attempt15": {"steps": 1000, "batch_size": 16, "context": 128, "lr": 3e-3, "min_lr": 3e-4, "warmup": 50},
    "story3": {},
    "story_reading": {},
    # 900 steps: as long as fine-tuning can run within the 15 minutes on this CPU (600 took
    # 7.4–9.5 min); shipped_900 is the compute-matched control for story_reading_900. It beat the
    # 600-step recipe in every seed on dev (88.1% against 79.1% mean) and config/recipes/sft.json
    # has run 900 steps since 2026-12-01: `shipped` measurements before that date are of 600 steps
    # (each records its steps), and shipped_900 is now the same as shipped.
    "story_reading_900": {"steps": 900},
    "shipped_900": {"steps": 900},
}
# name -> the training mix of sample-instructions, where a method changes it (dev and test never
# change: they are drawn from their own streams). story3: three shares of story questions, the
# one family under its baseline, one share of each other family, in the same 600 steps.
# story_reading: two shares of a training aid (instructions.story_reading: "What does Noor have?"
# → "a red ball", "Who has the red ball?"), the same stories asked for a whole phrase, next to one
# share of each family, in the same 600 steps.
TRAIN_FAMILY_WEIGHTS = {"story3": {**instructions.FAMILY_WEIGHTS, "story": 3},
                        "story_reading": {**instructions.FAMILY_WEIGHTS, "story_reading": 2},
                        "story_reading_900": {**instructions.FAMILY_WEIGHTS, "story_reading": 2}}


def machine() -> dict:
    import jax

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(), "jax": jax.__version__}


def pretrain(stories: Path, out: Path, seed: int, kind: str, steps: int | None, copy_steps: int | None) -> dict:
    # The session passes a time budget, so its schedule resolves to WSD (train.py); with the default
    # SESSION_TIME the budget never binds and the plan is WSD over the recipe's steps, which this is.
    config = dataclasses.replace(load_train_config("prototype"), schedule="wsd")
    if copy_steps is not None:
        config = dataclasses.replace(config, copy_warmup_steps=copy_steps)
    changes = {"seed": seed, **({"steps": steps} if steps else {})}
    if kind == "copy-free":  # the warm-up's steps go to the stories: the compute-matched control
        changes["steps"] = changes.get("steps", config.steps) + config.copy_warmup_steps
        changes["copy_warmup_steps"] = 0
    if kind == "recall":  # the same warm-up steps, half of each batch key-value recall instead of copying
        changes["recall_share"] = RECALL_SHARE
    config = dataclasses.replace(config, **changes)
    summary_path = out / "summary.json"
    if not (summary_path.exists() and json.loads(summary_path.read_text())["stop_reason"] == "completed"):
        train(config, load_model_config("tiny"), stories, out, show_progress=False)
    return json.loads(summary_path.read_text())


def fine_tune_seed(pretrained: Path, instructions: Path, out: Path, method: str, seed: int,
                   steps: int | None) -> dict:
    changes = {**METHODS[method], "seed": seed, **({"steps": steps} if steps else {})}
    config = dataclasses.replace(load_train_config("sft"), **changes)
    report_path = out / "sft.json"
    if not report_path.exists():
        fine_tune(pretrained, instructions, out, config, eval_examples=0, show_progress=False, log=print)
    return json.loads((out / "summary.json").read_text())


def prepare_instructions(out: Path, tokenizer: Path, weights: dict[str, int] | None) -> None:
    """`lumi prepare --source sample-instructions` with the pretrained tokenizer, and the method's
    own training mix when it has one (dev and test keep equal shares of every family)."""
    prepare_dataset("sample-instructions", out, tokenizer=tokenizer, family_weights=weights)


def scored(run_dir: Path, examples: list[dict]) -> dict:
    run = load_run(run_dir)
    result = exact_match(run.model_config, run.params, run.tokenizer, examples)
    return {key: result[key] for key in ("accuracy", "correct", "total", "by_family", "baselines", "wrong_samples")}


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "seeds": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=tuple(METHODS), default="shipped")
    parser.add_argument("--pretrain", choices=("prototype", "copy-free", "recall"), default="prototype")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split", choices=("dev", "test"), default="dev",
                        help="dev for every choice; test once per final method")
    parser.add_argument("--pretrain-steps", type=int, help="shorten the pretraining (not the shipped path)")
    parser.add_argument("--copy-warmup-steps", type=int, help="shorten the copy warm-up (not the shipped path)")
    parser.add_argument("--sft-steps", type=int, help="shorten the fine-tuning (not the method as named)")
    parser.add_argument("--name", default="sft_protocol", help="prefix of the data/ and runs/ directories")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)

    weights = TRAIN_FAMILY_WEIGHTS.get(args.method)
    stories = Path(f"data/{args.name}_stories")
    instructions_dir = Path(f"data/{args.name}_instructions" + (f"-{args.method}" if weights else ""))
    if not (stories / "meta.json").exists():
        prepare_dataset("sample", stories, vocab_size=load_model_config("tiny").vocab_size)
    shortened = "".join(f"-{flag}{value}" for flag, value in (("p", args.pretrain_steps), ("c", args.copy_warmup_steps),
                                                              ("f", args.sft_steps)) if value is not None)
    per_seed = []
    for seed in args.seeds:
        pretrained = Path(f"runs/{args.name}_pre-{args.pretrain}{shortened}-s{seed}")
        started = time.perf_counter()
        pretrain_summary = pretrain(stories, pretrained, seed, args.pretrain, args.pretrain_steps, args.copy_warmup_steps)
        if not (instructions_dir / "meta.json").exists():  # one tokenizer for every seed: the same stories
            prepare_instructions(instructions_dir, pretrained / "tokenizer.model", weights)
        tuned = Path(f"runs/{args.name}_{args.method}-{args.pretrain}{shortened}-s{seed}")
        sft_summary = fine_tune_seed(pretrained, instructions_dir, tuned, args.method, seed, args.sft_steps)
        examples = held_out_examples(instructions_dir, args.split)
        per_seed.append({"seed": seed, "pretrained_run": str(pretrained), "fine_tuned_run": str(tuned),
                         "pretraining": {k: pretrain_summary[k] for k in ("steps", "final_val_loss", "wall_time_s")}
                         | {"copy_warmup": pretrain_summary.get("copy_warmup")},
                         "fine_tuning": {k: sft_summary[k] for k in ("steps", "final_train_loss", "wall_time_s",
                                                                    "stop_reason")},
                         "pretrained_only": scored(pretrained, examples), "fine_tuned": scored(tuned, examples),
                         "stage_seconds_this_invocation": round(time.perf_counter() - started, 1)})
        print(f"seed {seed}: {args.split} exact match {per_seed[-1]['fine_tuned']['accuracy']:.1%} "
              f"(pretrained only {per_seed[-1]['pretrained_only']['accuracy']:.1%})", flush=True)

    families = sorted(per_seed[0]["fine_tuned"]["by_family"])
    baselines = per_seed[0]["fine_tuned"]["baselines"]  # the same examples for every seed
    summary = {
        "fine_tuned": spread([s["fine_tuned"]["accuracy"] for s in per_seed]),
        "pretrained_only": spread([s["pretrained_only"]["accuracy"] for s in per_seed]),
        "by_family": {family: {"fine_tuned": spread([s["fine_tuned"]["by_family"][family] for s in per_seed]),
                               "pretrained_only": spread([s["pretrained_only"]["by_family"][family] for s in per_seed]),
                               "trivial_baselines": baselines[family]} for family in families},
        "trivial_baselines_overall": baselines["all"],
        "fine_tuning_wall_time_s": spread([s["fine_tuning"]["wall_time_s"] for s in per_seed]),
    }
    summary["every_family_above_its_baseline"] = all(
        summary["by_family"][f]["fine_tuned"]["mean"] > baselines[f]["best"] for f in families)
    key = f"{args.method} after {args.pretrain}{shortened} on {args.split}"
    report = json.loads(RESULT.read_text()) if RESULT.exists() else {"measurements": {}}
    report["protocol"] = __doc__.split("\n\n")[0]
    report["measurements"][key] = {
        "command": " ".join([".venv/bin/python benchmarks/sft_accuracy.py", *sys.argv[1:]]),
        "method": {"name": args.method, "recipe": "config/recipes/sft.json", "changes": METHODS[args.method],
                   "instructions": str(instructions_dir),
                   "train_family_weights": json.loads((instructions_dir / "meta.json").read_text())
                   .get("source_details", {}).get("train_family_weights")},
        "pretraining": {"recipe": "config/recipes/prototype.json", "kind": args.pretrain,
                        "steps_override": args.pretrain_steps, "copy_warmup_steps_override": args.copy_warmup_steps},
        "shipped_path": not (args.pretrain_steps or args.copy_warmup_steps is not None or args.sft_steps)
        and args.pretrain == "prototype" and args.method == "shipped",
        "sft_steps_override": args.sft_steps, "split": args.split, "examples": per_seed[0]["fine_tuned"]["total"],
        "machine": machine(), "summary": summary, "per_seed": per_seed,
    }
    RESULT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({key: summary["fine_tuned"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
