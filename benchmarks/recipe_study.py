"""What a time budget buys on real text: a grid of recipes against `--recipe auto`.

Data: the first 1 MB of War and Peace (../shared/data/war_and_peace.txt) as training text, the
next 100 kB as held-out text (`lumi prepare --val-source`), prepared at several vocabularies.
For each budget, every grid point trains `lumi train ... --time-budget B` in its own process
(so each run's wall clock includes its own compile, as a user's would), then the whole held-out
split is scored in bits per byte (`lumi evaluate`). Also run at each budget:

- `--recipe auto` (no grid: it chooses the shape, vocabulary, batch, lr and length itself);
- the hand-picked run of issue 16 (micro, vocab 512, 8 × 128, lr 3e-3, 4000 steps) twice: with
  today's cosine over 4000 steps cut by the budget, and with the time-aware WSD schedule, over
  several seeds, so the schedule's effect is read against the seed spread;
- the same with 20,000 steps, which no short budget reaches: the budget binds, the cosine is cut
  mid-decay, and WSD sizes its decay to the deadline.

    python benchmarks/recipe_study.py --budgets 2 5 --out benchmarks/results/recipe_study.json

Nothing else should run on the machine meanwhile: a time budget turns contention into worse
models. The result file records the machine, the load average before and after, and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lumi_jax.data.prepare import prepare_dataset  # noqa: E402
from lumi_jax.evaluate import evaluate_run  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "war_and_peace.txt"
TRAIN_BYTES, HELD_OUT_BYTES = 1_000_000, 100_000
SHAPES = {"d64-l2": (64, 2, 2), "d96-l3": (96, 3, 3), "d128-l4": (128, 4, 4), "d192-l4": (192, 4, 6)}
HAND_PICKED = {"shape": "d64-l2", "vocab": 512, "batch": 8, "context": 128, "lr": 3e-3, "steps": 4000}
BINDING_STEPS = 20_000


def cut_text(work: Path) -> tuple[Path, Path]:
    """train.txt and held_out.txt: byte ranges of the corpus, each cut back to a line end."""
    data = CORPUS.read_bytes()
    train_end = data.rindex(b"\n", 0, TRAIN_BYTES) + 1
    held_end = data.rindex(b"\n", 0, train_end + HELD_OUT_BYTES) + 1
    work.mkdir(parents=True, exist_ok=True)
    (work / "text").mkdir(exist_ok=True)
    train, held_out = work / "text" / "train.txt", work / "text" / "held_out.txt"
    train.write_bytes(data[:train_end])
    held_out.write_bytes(data[train_end:held_end])
    return train, held_out


def dataset(work: Path, vocab: int) -> Path:
    out = work / f"wp-v{vocab}"
    if not (out / "meta.json").is_file():
        train, held_out = cut_text(work)
        prepare_dataset(str(train), out, vocab_size=vocab, val_source=str(held_out), force=True, log=None)
    return out


def model_file(work: Path, shape: str, vocab: int, context: int) -> Path:
    d, layers, heads = SHAPES[shape]
    path = work / "models" / f"{shape}-v{vocab}-t{context}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": f"{shape}-v{vocab}", "vocab_size": vocab, "d_model": d, "n_layers": layers,
                                "n_heads": heads, "max_seq_len": context}))
    return path


def train_and_score(work: Path, name: str, budget: float, vocab: int, flags: list[str]) -> dict:
    run_dir = work / "runs" / f"{name}-{budget:g}min"
    if (run_dir / "eval.json").is_file():  # finished earlier: the study resumes where it stopped
        return json.loads((run_dir / "result.json").read_text())
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    command = [sys.executable, "-m", "lumi_jax.cli", "train", "--data", str(dataset(work, vocab)), "--out", str(run_dir),
               "--time-budget", f"{budget:g}", "--eval-every", "0", "--quiet", *flags]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{name}: {' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    report = evaluate_run(run_dir, samples=False)
    config = json.loads((run_dir / "config.json").read_text())
    result = {"name": name, "budget_min": budget, "vocab": vocab, "flags": flags, "process_wall_s": round(wall, 1),
              "steps": summary["steps"], "stop_reason": summary["stop_reason"], "schedule": summary.get("schedule"),
              "model": config["model"]["name"], "params": report["model"]["params"],
              "train": {k: config["train"][k] for k in ("batch_size", "context", "lr", "min_lr", "schedule", "seed")},
              "held_out_bits_per_byte": round(report["validation"]["bits_per_byte"], 4),
              "unigram_bits_per_byte": round(report["baselines"]["unigram"]["bits_per_byte"], 4),
              "command": " ".join(command)}
    if "auto_recipe" in config:
        result["auto_recipe"] = config["auto_recipe"]
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"{name} @ {budget:g} min: {result['held_out_bits_per_byte']:.4f} bits/byte, {result['steps']} steps, "
          f"{wall:.0f} s", flush=True)
    return result


def grid_flags(shape: str, vocab: int, lr: float, batch: int, context: int, work: Path) -> list[str]:
    return ["--model", str(model_file(work, shape, vocab, context)), "--batch-size", str(batch),
            "--context", str(context), "--lr", f"{lr:g}", "--min-lr", f"{lr / 10:g}", "--steps", "1000000",
            "--warmup", "100", "--schedule", "wsd", "--save-every", "100000", "--log-every", "50"]


def hand_picked_flags(schedule: str, seed: int, work: Path, steps: int = HAND_PICKED["steps"]) -> list[str]:
    h = HAND_PICKED
    return ["--model", str(model_file(work, h["shape"], h["vocab"], h["context"])), "--batch-size", str(h["batch"]),
            "--context", str(h["context"]), "--lr", f"{h['lr']:g}", "--min-lr", f"{h['lr'] / 10:g}",
            "--steps", str(steps), "--warmup", "100", "--schedule", schedule, "--seed", str(seed),
            "--save-every", "100000", "--log-every", "50"]


def study(budget: float, work: Path, seeds: int, grid: list[tuple[str, int, float]]) -> dict:
    results = {"grid": [], "auto": None, "hand_picked": {"cosine": [], "wsd": []},
               "budget_binds": {"cosine": [], "wsd": []}}
    for shape, vocab, lr in grid:
        flags = grid_flags(shape, vocab, lr, 8 if budget < 10 else 16, 128 if budget < 10 else 256, work)
        results["grid"].append(train_and_score(work, f"grid-{shape}-v{vocab}-lr{lr:g}", budget, vocab, flags))
    from lumi_jax import auto_recipe

    auto_vocab = auto_recipe.vocab_for_corpus(TRAIN_BYTES)
    # Named by the constants it ran with: a study rerun after they change keeps the earlier runs.
    auto_name = f"auto-bpv{auto_recipe.BYTES_PER_VOCAB_ID}-tpp{auto_recipe.TOKENS_PER_PARAM:g}"
    results["auto"] = train_and_score(work, auto_name, budget, auto_vocab, ["--recipe", "auto"])
    results["auto_with_other_constants"] = [
        json.loads(path.read_text()) for path in sorted((work / "runs").glob(f"auto-*-{budget:g}min/result.json"))
        if path.parent.name != f"{auto_name}-{budget:g}min"]
    for seed in range(seeds):
        for schedule in ("cosine", "wsd"):
            results["hand_picked"][schedule].append(train_and_score(
                work, f"hand-{schedule}-seed{seed}", budget, HAND_PICKED["vocab"], hand_picked_flags(schedule, seed, work)))
    for seed in range(seeds):
        for schedule in ("cosine", "wsd"):
            results["budget_binds"][schedule].append(train_and_score(
                work, f"binding-{schedule}-seed{seed}", budget, HAND_PICKED["vocab"],
                hand_picked_flags(schedule, seed, work, steps=BINDING_STEPS)))
    best = min(results["grid"], key=lambda r: r["held_out_bits_per_byte"]) if results["grid"] else None
    results["best_grid"] = best and {"name": best["name"], "held_out_bits_per_byte": best["held_out_bits_per_byte"]}
    if best:
        results["auto_minus_best_grid"] = round(results["auto"]["held_out_bits_per_byte"]
                                                - best["held_out_bits_per_byte"], 4)
    for group in ("hand_picked", "budget_binds"):
        for schedule, runs in results[group].items():
            values = [r["held_out_bits_per_byte"] for r in runs]
            results[f"{group}_{schedule}_bits_per_byte"] = {"mean": round(sum(values) / len(values), 4),
                                                            "min": min(values), "max": max(values)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.0, 5.0, 15.0], help="minutes")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the hand-picked schedule comparison")
    parser.add_argument("--work", type=Path, default=REPO / ".tmp" / "recipe_study")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "recipe_study.json")
    parser.add_argument("--grid", choices=("full", "small"), default="full",
                        help="small: one lr per shape at vocab 512 (for budgets the full grid cannot afford)")
    args = parser.parse_args()
    if not CORPUS.is_file():
        raise SystemExit(f"{CORPUS}: not found; the study needs the shared War and Peace text")
    load_before = os.getloadavg()
    grid = [(shape, 512, lr) for shape in SHAPES for lr in ((1e-3, 3e-3) if args.grid == "full" else (2e-3,))]
    grid += [("d96-l3", vocab, 2e-3) for vocab in (1024, 2048)] if args.grid == "full" else []
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "load_average_before": load_before},
              "data": {"corpus": str(CORPUS.relative_to(REPO.parent)), "train_bytes": TRAIN_BYTES,
                       "held_out_bytes": HELD_OUT_BYTES},
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "budgets": {}}
    for budget in args.budgets:
        report["budgets"][f"{budget:g}"] = study(budget, args.work, args.seeds, grid)
        report["machine"]["load_average_after"] = os.getloadavg()
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # written after every budget
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
