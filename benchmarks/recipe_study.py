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

Each budget's row is merged into the result file (a run with `--budgets 5` keeps the 2-minute row).
`--text-offset` and `--train-bytes` cut another stretch of the book, of another size: the check
that `--recipe auto`'s constants, fitted on the first megabyte, hold on text they were not fitted
on (written to its own file, e.g. recipe_study_other_text.json).

Nothing else should run on the machine meanwhile: a time budget turns contention into worse
models. The result file records the machine, the load average before and after, and every run.
"""

from __future__ import annotations

import argparse
import dataclasses
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
GRIDS = {  # (shape, vocab, lr)
    "full": [(shape, 512, lr) for shape in SHAPES for lr in (1e-3, 3e-3)]
    + [("d96-l3", vocab, 2e-3) for vocab in (1024, 2048)],
    "small": [(shape, 512, 2e-3) for shape in SHAPES],
    "larger-vocab": [("d96-l3", 2048, 2e-3), ("d128-l4", 1024, 2e-3), ("d128-l4", 2048, 2e-3),
                     ("d128-l4", 4096, 2e-3), ("d192-l4", 2048, 2e-3)],
    # For 15 minutes: the two best shapes of the 5-minute row, the larger at two vocabularies.
    "long-budget": [("d128-l4", 2048, 2e-3), ("d192-l4", 1024, 2e-3), ("d192-l4", 2048, 2e-3)],
}


@dataclasses.dataclass(frozen=True)
class TextCut:
    """Which bytes of the book are the training text; the held-out text follows them."""

    offset: int = 0
    train_bytes: int = TRAIN_BYTES

    @property
    def tag(self) -> str:  # "" for the study's own first megabyte: its earlier runs keep their names
        return "" if self == TextCut() else f"-at{self.offset}-{self.train_bytes}"


def cut_text(work: Path, cut: TextCut) -> tuple[Path, Path]:
    """train.txt and held_out.txt: byte ranges of the corpus, each cut back to a line end."""
    data = CORPUS.read_bytes()
    start = data.rindex(b"\n", 0, cut.offset) + 1 if cut.offset else 0
    train_end = data.rindex(b"\n", 0, start + cut.train_bytes) + 1
    held_end = data.rindex(b"\n", 0, train_end + HELD_OUT_BYTES) + 1
    if held_end - train_end < HELD_OUT_BYTES // 2:
        raise SystemExit(f"the book has too little text after byte {train_end} for a held-out split")
    directory = work / f"text{cut.tag}"
    directory.mkdir(parents=True, exist_ok=True)
    train, held_out = directory / "train.txt", directory / "held_out.txt"
    train.write_bytes(data[start:train_end])
    held_out.write_bytes(data[train_end:held_end])
    return train, held_out


def dataset(work: Path, vocab: int, cut: TextCut) -> Path:
    out = work / f"wp{cut.tag}-v{vocab}"
    if not (out / "meta.json").is_file():
        train, held_out = cut_text(work, cut)
        prepare_dataset(str(train), out, vocab_size=vocab, val_source=str(held_out), force=True, log=None)
    return out


def model_file(work: Path, shape: str, vocab: int, context: int) -> Path:
    d, layers, heads = SHAPES[shape]
    path = work / "models" / f"{shape}-v{vocab}-t{context}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": f"{shape}-v{vocab}", "vocab_size": vocab, "d_model": d, "n_layers": layers,
                                "n_heads": heads, "max_seq_len": context}))
    return path


def train_and_score(work: Path, name: str, budget: float, vocab: int, flags: list[str], cut: TextCut,
                    data: Path | None = None) -> dict:
    """Train one point into work/runs (or reuse it if it finished earlier) and score it on the
    held-out split. `data`: a prepared dataset other than the book's cut (its own val split held out)."""
    run_dir = work / "runs" / f"{name}{cut.tag}-{budget:g}min"
    if (run_dir / "eval.json").is_file():  # finished earlier: the study resumes where it stopped
        return json.loads((run_dir / "result.json").read_text())
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    command = [sys.executable, "-m", "lumi_jax.cli", "train", "--data", str(data or dataset(work, vocab, cut)),
               "--out", str(run_dir),
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


def study(budget: float, work: Path, seeds: int, grid: list[tuple[str, int, float]], cut: TextCut) -> dict:
    results = {"grid": [], "auto": None, "hand_picked": {"cosine": [], "wsd": []},
               "budget_binds": {"cosine": [], "wsd": []}}
    for shape, vocab, lr in grid:
        flags = grid_flags(shape, vocab, lr, 8 if budget < 10 else 16, 128 if budget < 10 else 256, work)
        results["grid"].append(train_and_score(work, f"grid-{shape}-v{vocab}-lr{lr:g}", budget, vocab, flags, cut))
    from lumi_jax import auto_recipe

    auto_vocab = auto_recipe.vocab_for_corpus(cut.train_bytes)
    # Named by the constants it ran with: a study rerun after they change keeps the earlier runs.
    auto_name = (f"auto-bpv{auto_recipe.BYTES_PER_VOCAB_ID}-tpp{auto_recipe.TOKENS_PER_PARAM:g}"
                 f"-stop{auto_recipe.MAX_EPOCHS}passes")
    results["auto"] = train_and_score(work, auto_name, budget, auto_vocab, ["--recipe", "auto"], cut)
    results["auto_with_other_constants"] = [
        json.loads(path.read_text())
        for path in sorted((work / "runs").glob(f"auto-*{cut.tag}-{budget:g}min/result.json"))
        if path.parent.name != f"{auto_name}{cut.tag}-{budget:g}min" and (cut.tag or "-at" not in path.parent.name)]
    for seed in range(seeds):
        for schedule in ("cosine", "wsd"):
            results["hand_picked"][schedule].append(train_and_score(
                work, f"hand-{schedule}-seed{seed}", budget, HAND_PICKED["vocab"], hand_picked_flags(schedule, seed, work),
                cut))
    for seed in range(seeds):
        for schedule in ("cosine", "wsd"):
            results["budget_binds"][schedule].append(train_and_score(
                work, f"binding-{schedule}-seed{seed}", budget, HAND_PICKED["vocab"],
                hand_picked_flags(schedule, seed, work, steps=BINDING_STEPS), cut))
    best = min(results["grid"], key=lambda r: r["held_out_bits_per_byte"]) if results["grid"] else None
    results["best_grid"] = best and {"name": best["name"], "held_out_bits_per_byte": best["held_out_bits_per_byte"]}
    if best:
        results["auto_minus_best_grid"] = round(results["auto"]["held_out_bits_per_byte"]
                                                - best["held_out_bits_per_byte"], 4)
    for group in ("hand_picked", "budget_binds"):
        for schedule, runs in results[group].items() if seeds else ():
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
    parser.add_argument("--grid", choices=tuple(GRIDS), default="full",
                        help="full: every shape at vocab 512 with two lrs, and d96-l3 at 1024/2048; small: one lr "
                        "per shape at vocab 512; larger-vocab: the shapes the 2-minute row favoured, at vocab "
                        "1024-4096 (for budgets the full grid cannot afford); long-budget: the 5-minute row's two best "
                        "shapes at 1024-2048, for 15 minutes")
    parser.add_argument("--text-offset", type=int, default=0, help="where the training text starts in the book (bytes)")
    parser.add_argument("--train-bytes", type=int, default=TRAIN_BYTES, help="how much training text (bytes)")
    args = parser.parse_args()
    if not CORPUS.is_file():
        raise SystemExit(f"{CORPUS}: not found; the study needs the shared War and Peace text")
    cut = TextCut(args.text_offset, args.train_bytes)
    data = {"corpus": str(CORPUS.relative_to(REPO.parent)), "text_offset": cut.offset, "train_bytes": cut.train_bytes,
            "held_out_bytes": HELD_OUT_BYTES}
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if "machine" in report:  # the first format: one machine and command for the whole file, no offset
        for row in report["budgets"].values():
            row.setdefault("machine", report["machine"])
            row.setdefault("command", report["command"])
        del report["machine"], report["command"]
        report["data"].setdefault("text_offset", 0)
    if report.get("data", data) != data:
        raise SystemExit(f"{args.out}: holds a study of other text ({report['data']}); give another --out")
    report.update({"data": data, "budgets": report.get("budgets", {})})
    for budget in args.budgets:
        load_before = os.getloadavg()
        row = study(budget, args.work, args.seeds, GRIDS[args.grid], cut)
        row["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "load_average_before": load_before,
                          "load_average_after": os.getloadavg()}
        row["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        report["budgets"][f"{budget:g}"] = row  # each budget's row merged in, written as soon as it is done
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
