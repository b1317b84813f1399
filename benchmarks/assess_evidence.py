"""The measurements behind `lumi assess`'s thresholds (see lumi_jax/assess.py).

Trains `micro` models on War and Peace with the real trainer, in four known conditions, and
records what each assessment statistic measures on them:

    converged      2,000 steps, learning rate 3e-3 with cosine decay: the healthy reference;
    stopped_early  150 steps of the same recipe: under-trained by construction;
    over_fitted    200 steps at 2e-2 on ~3,500 training tokens (~30 epochs);
    lr_too_high    400 steps at 0.1 without gradient clipping: a learning rate ~30x too high;
    lr_far_too_high  300 steps at 0.5 without clipping, beta2 0.99: a learning rate that spikes.

and, for the converged model, the repetition rate of sampled continuations, of greedy ones, and
of real validation text of the same length.

    .venv/bin/python benchmarks/assess_evidence.py   # ~10 min on 2 CPU cores
writes benchmarks/results/assess_evidence.json (the machine and load are recorded with it).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lumi_jax import assess, evaluate  # noqa: E402
from lumi_jax.config import TrainConfig, load_model_config  # noqa: E402
from lumi_jax.data.prepare import prepare_dataset  # noqa: E402
from lumi_jax.generate import GREEDY, generate_ids  # noqa: E402
from lumi_jax.metrics import read_metrics  # noqa: E402
from lumi_jax.runs import load_run  # noqa: E402
from lumi_jax.train import train  # noqa: E402

BOOK = ROOT.parent / "shared" / "data" / "war_and_peace.txt"
OUT = ROOT / "benchmarks" / "results" / "assess_evidence.json"


def statistics(run_dir: Path) -> dict:
    """What each assessment finding measures on this run."""
    config = json.loads((run_dir / "config.json").read_text())
    steps_t, losses_t, steps_v, losses_v = assess.split_curves(read_metrics(run_dir / "metrics.jsonl"))
    _residuals, _steps, noise = assess.robust_noise(steps_t, losses_t)
    overfit = assess.over_fitting(steps_t, losses_t, steps_v, losses_v, noise)["values"]
    under = assess.under_training(steps_t, losses_t, steps_v, losses_v, int(steps_t[-1]))["values"]
    spikes = assess.loss_spikes(steps_t, losses_t, config["train"], None)["values"]
    return {"gap_ratio": overfit.get("gap_ratio"), "rise_ratio": overfit.get("rise_ratio"),
            "drop_ratio_last_third": under.get("drop_ratio"), "drop_curve": under.get("curve"),
            "slope_z": (-under["slope_per_step"] / under["slope_stderr"]) if under.get("slope_stderr") else None,
            "spike_max_z": spikes.get("max_z"), "noise_sd": spikes.get("noise_sd"),
            "final_train_loss": float(losses_t[-1]), "final_val_loss": float(losses_v[-1]) if len(losses_v) else None}


def sectioned(start: int, length: int, sections: int) -> str:
    text = BOOK.read_text(encoding="utf-8")[start:start + length]
    size = length // sections
    return "\n\n\n".join(text[i:i + size] for i in range(0, length, size))


def main() -> int:
    if not BOOK.is_file():
        print(f"{BOOK} is absent; this benchmark needs it", file=sys.stderr)
        return 1
    started = time.time()
    micro = load_model_config("micro")
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "load_average_start": os.getloadavg()}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        book_data = tmp / "book"
        prepare_dataset(str(BOOK), book_data, model="micro", log=None)
        (tmp / "small.txt").write_text(sectioned(5_000, 20_000, 10), encoding="utf-8")
        small_data = tmp / "small"
        prepare_dataset(str(tmp / "small.txt"), small_data, model="micro", val_fraction=0.5, log=None)

        base = dict(batch_size=16, context=64, warmup=20, eval_every=50, eval_batches=8, log_every=10)
        conditions = {
            "converged": (book_data, TrainConfig(steps=2000, lr=3e-3, min_lr=3e-4, save_every=2000, **base)),
            "stopped_early": (book_data, TrainConfig(steps=150, lr=3e-3, min_lr=3e-4, save_every=150,
                                                     **{**base, "eval_every": 15})),
            "over_fitted": (small_data, TrainConfig(steps=200, lr=2e-2, min_lr=2e-3, weight_decay=0.0,
                                                    save_every=200, **{**base, "eval_every": 20})),
            "lr_too_high": (book_data, TrainConfig(steps=400, lr=0.1, min_lr=0.01, grad_clip=0.0,
                                                   save_every=400, **base)),
            "lr_far_too_high": (book_data, TrainConfig(steps=300, lr=0.5, min_lr=0.05, grad_clip=0.0, beta2=0.99,
                                                       save_every=300, **{**base, "log_every": 5})),
        }
        for name, (data, train_config) in conditions.items():
            run_started = time.time()
            summary = train(train_config, micro, data, tmp / name, show_progress=False)
            results["runs"][name] = {"train": {k: getattr(train_config, k) for k in ("steps", "lr", "grad_clip")},
                                     "stop_reason": summary["stop_reason"], **statistics(tmp / name),
                                     "seconds": round(time.time() - run_started, 1)}
            print(name, json.dumps(results["runs"][name]), flush=True)

        loaded = load_run(tmp / "converged")
        report = evaluate.evaluate_loaded(loaded, book_data, quick=True)
        prompts = [p for texts in evaluate.load_prompts().values() for p in texts]
        greedy = generate_ids(loaded.model_config, loaded.params, [loaded.tokenizer.encode(p, bos=True) for p in prompts],
                              max_new_tokens=evaluate.SAMPLE_TOKENS, sampling=GREEDY)
        results["repetition"] = {
            "sampled": report["samples"]["repetition_rate"],
            "greedy": float(np.mean([evaluate.repetition_rate(r.new_ids) or 0.0 for r in greedy])),
            "real_text": report["samples"]["reference_text"]["repetition_rate"],
            "tokens": evaluate.SAMPLE_TOKENS,
        }
        results["converged_eval"] = {"bits_per_byte": report["validation"]["bits_per_byte"],
                                     "unigram_bits_per_byte": report["baselines"]["unigram"]["bits_per_byte"]}
    results["seconds"] = round(time.time() - started, 1)
    results["machine"]["load_average_end"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
