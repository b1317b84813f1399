"""The bad-input catalogue and the fault tests, run and counted: benchmarks/results/reliability.json.

    .venv/bin/python benchmarks/reliability_catalogue.py

Runs tests/test_bad_inputs.py under pytest (each case records its exit status, its stderr and
whether the data and run directories were left unchanged), then writes how many cases there are,
how many ran and were refused cleanly, which wait for a line in another module (skipped until
then), and the defects the catalogue found while it was being written, with where each was fixed.
Then runs tests/test_faults.py (ten kill -9s at chosen moments, a file-size limit reached
mid-run) and records what each kill hit, the steps it cost and what the full disk kept.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT = REPO_ROOT / "benchmarks" / "results" / "reliability.json"

# What the catalogue found on its first runs (before the fixes), and where each was fixed.
DEFECTS = [
    {"case": "train-out-is-a-file", "found": "lumi train --out FILE: a NotADirectoryError traceback",
     "fix": "run_lock.RunLock refuses a file in one line (train.py takes the lock)"},
    {"case": "train-batch-huge", "found": "--batch-size 1000000000000: a numpy MemoryError traceback, after "
     "config.json was written", "fix": "data/loader.check_batch_fits, called before anything is written (train.py)"},
    {"case": "generate-binary-prompts-file", "found": "--prompts BINARY: a UnicodeDecodeError traceback",
     "fix": "generate.read_prompts_file"},
    {"case": "cleanup-days-nan", "found": "lumi cleanup --days nan was accepted (exit 0)", "fix": "sessions/cleanup.run"},
    {"case": "evaluate-every-checkpoint-damaged", "found": "three lines on stderr: a raw UserWarning per "
     "damaged step, then the error", "fix": "checkpoint.restore_latest_good reports one line"},
    {"case": "generate-run-config-of-another-model", "found": "a run whose config.json names another model: "
     "'the files are damaged: retrain' (wrong cause, wrong advice); for a changed shape, ~20 'Exception ignored "
     "in coroutine' blocks as well", "fix": "checkpoint.CheckpointMismatch (the step's own model config is "
     "compared first), and the aborted reads' noise is dropped"},
    {"case": "data-info-file-for-directory, generate-run-is-a-file",
     "found": "a file given for a directory: 'no such directory; create it with lumi prepare --out FILE'",
     "fix": "data/loader.TokenDataset and runs.load_run say it is a file (train.run's own check: a line for train.py)"},
    {"case": "dataset-truncated-bin, dataset-wrong-vocab, dataset-replaced-tokenizer, dataset-meta-missing-field",
     "found": "every lumi train --steps N (N <= 100) without --warmup was refused for its warmup, before the "
     "dataset was even looked at", "fix": "flags.short_run_warmup: a new run's warmup is at most a tenth of --steps "
     "(train.py passes scale_warmup)"},
    {"case": "dataset-ids-out-of-range", "found": "ids >= vocab_size trained (NaN, then 'lower --lr')",
     "fix": "data/loader.TokenDataset.check_ids (train.py's open_dataset; evaluate and sft call it)"},
    {"case": "second-writer", "found": "two writers on one --out both ran", "fix": "run_lock.RunLock (train.py)"},
    {"case": "import-into-a-run-being-written", "found": "refused only as 'exists and is not empty'; two imports "
     "into one --out delete each other's temporary directory", "fix": "RunLock in interop/import_command.py"},
    {"case": "data-info-samples-negative, cleanup-days-negative", "found": "the line named no fix",
     "fix": "data/info.py, sessions/cleanup.py"},
    {"case": "(by reading) an unreadable meta.json or tokenizer.model", "found": "a PermissionError traceback for "
     "a user who is not root", "fix": "data/loader.unreadable_is_user_error (config.read_json: a line for config.py)"},
]


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        record = Path(scratch) / "cases.jsonl"
        env = {**os.environ, "LUMI_CATALOGUE_RECORD": str(record)}
        result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_bad_inputs.py", "-q", "-rs",
                                 "-p", "no:cacheprovider"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        ran = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        faults_record = Path(scratch) / "faults.jsonl"
        faults = subprocess.run([sys.executable, "-m", "pytest", "tests/test_faults.py", "-q", "-p",
                                 "no:cacheprovider"], cwd=REPO_ROOT, capture_output=True, text=True,
                                env={**os.environ, "LUMI_FAULTS_RECORD": str(faults_record)})
        fault_figures = ({entry.pop("kind"): entry for entry in map(json.loads, faults_record.read_text().splitlines())}
                         if faults_record.exists() else {})
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_bad_inputs import CASES  # noqa: E402 (the catalogue itself, for the count)

    clean = [r for r in ran if r["exit_status"] == 2 and len(r["stderr"].strip().splitlines()) == 1
             and "Traceback" not in r["stderr"] and r["unchanged"]]
    skipped = {}  # "train.py does not call RunLock()" -> how many cases wait for it
    for found in re.finditer(r"SKIPPED \[(\d+)\] [^:]+:\d+: (.*?) yet", result.stdout):
        skipped[found.group(2)] = int(found.group(1))
    summary = {
        "cases": len(CASES),
        "ran": len(ran),
        "refused_cleanly": len(clean),
        "not_clean": [r["name"] for r in ran if r not in clean],
        "skipped_until_wired": sum(skipped.values()),
        "waiting_for": skipped,
        "pytest_exit_status": result.returncode,
        "by_kind": {how: sum(1 for c in CASES if c.how == how) for how in sorted({c.how for c in CASES})},
        "faults": {"pytest_exit_status": faults.returncode, **fault_figures},
        "defects_found": len(DEFECTS),
        "defects": DEFECTS,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
    }
    RESULT.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"{summary['cases']} cases: {summary['refused_cleanly']} of {summary['ran']} run refused cleanly, "
          f"{sum(skipped.values())} waiting for wiring; {len(DEFECTS)} defects found; wrote {RESULT}")
    kills = fault_figures.get("kill_points", {})
    print(f"faults: {kills.get('survived', 0)} kill -9s survived, bit-identical: {kills.get('bit_identical')}; full disk: "
          f"{fault_figures.get('full_disk', {}).get('steps_lost', 'not run')} steps lost")
    return 0 if result.returncode == 0 and faults.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
