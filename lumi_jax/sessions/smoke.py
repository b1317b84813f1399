"""A pipeline smoke test: every stage once, on the micro model, in a temporary directory.

prepare (a small sample corpus) → train (a few dozen steps) → load the run → generate. It leaves
nothing behind and touches nothing of yours; it answers "does the pipeline work on this
machine at all?" in well under a minute, naming the stage that breaks if one does.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

SMOKE_STEPS = 40
SMOKE_SIZE_MB = 0.3


def run_smoke_test(console: Console, steps: int = SMOKE_STEPS) -> dict[str, Any]:
    """Returns {"ok", "detail", "stages": {stage: seconds}}; never raises for a broken stage."""
    stages: dict[str, float] = {}
    stage = "start"
    try:
        with tempfile.TemporaryDirectory(prefix="lumi-smoke-") as scratch:
            root = Path(scratch)
            stage, started = "prepare", time.perf_counter()
            from lumi_jax.data.prepare import prepare_dataset

            prepare_dataset("sample", root / "data", model="micro", size_mb=SMOKE_SIZE_MB, log=console.print)
            stages[stage] = time.perf_counter() - started

            stage, started = "train", time.perf_counter()
            from lumi_jax.config import TrainConfig, load_model_config
            from lumi_jax.train import train

            config = TrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup=steps // 10, min_lr=3e-4,
                                 save_every=steps, eval_every=steps, log_every=steps // 4)
            summary = train(config, load_model_config("micro"), root / "data", root / "run", show_progress=False)
            stages[stage] = time.perf_counter() - started
            loss = summary["final_train_loss"]
            if summary["stop_reason"] != "completed" or loss is None or not math.isfinite(loss):
                return {"ok": False, "stages": stages,
                        "detail": f"train stopped ({summary['stop_reason']}): {summary['message']}"}

            stage, started = "generate", time.perf_counter()
            from lumi_jax.generate import generate_text
            from lumi_jax.runs import load_run

            loaded = load_run(root / "run")
            (text,) = generate_text(loaded.model_config, loaded.params, loaded.tokenizer, ["Once upon a time"],
                                    max_new_tokens=16)
            stages[stage] = time.perf_counter() - started
    except Exception as error:  # the point is to name the broken stage, whatever broke it
        return {"ok": False, "stages": stages, "detail": f"{stage} failed: {type(error).__name__}: {error}"}
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
    return {"ok": True, "stages": stages,
            "detail": f"prepare → train {steps} steps (loss {loss:.2f}) → generate {text!r} ({timings})"}
