"""How long the quick session takes on this machine, step by step, cold and warm.

    .venv/bin/python benchmarks/session_quick.py [--session quick] [--args "--steps 100"]

Runs `python -m lumi_jax.session SESSION` in a fresh temporary project directory as a user
would: first with JAX's compilation cache off (cold: the dataset is prepared, every step
compiles), then twice more in the same directory with a cache, reporting the last (warm: the
dataset reused, the compiled steps loaded). Each run is a new
process, so JAX start-up counts. The session's own record supplies the step durations and
results. Writes benchmarks/results/session_SESSION_cpu.json (or _gpu) with the machine stated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"


def machine() -> dict:
    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_1min_at_start": os.getloadavg()[0]}


def run_session(project: Path, session: str, extra: list[str], cache: str) -> dict:
    env = dict(os.environ, LUMI_COMPILE_CACHE=cache)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "lumi_jax.session", session, *extra], cwd=project,
                               env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    record_path = sorted((project / "sessions").glob("*.json"))[-1]
    record = json.loads(record_path.read_text())
    return {
        "exit_status": completed.returncode,
        "process_wall_s": round(wall_s, 2),
        "session_elapsed_s": record["elapsed_s"],
        "status": record["status"],
        "steps": {s["name"]: {"status": s["status"], "duration_s": s["duration_s"]} for s in record["steps"]},
        "metrics": {name: {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool)) or v is None}
                    for name, m in record["metrics"].items()},
        "reproducibility_identical": (record.get("reproducibility") or {}).get("identical"),
        "peak_rss_bytes": record["peak_resources"]["peak_rss_bytes"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", default="quick")
    parser.add_argument("--args", default="", help="extra session arguments, e.g. \"--steps 100\"")
    args = parser.parse_args()
    extra = shlex.split(args.args)
    result = {"command": f"python benchmarks/session_quick.py --session {args.session} --args {args.args!r}",
              "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="lumi-session-bench-") as scratch:
        project = Path(scratch)
        with tempfile.TemporaryDirectory(prefix="lumi-xla-cache-") as cache:
            result["cold"] = run_session(project, args.session, extra, cache="off")
            run_session(project, args.session, extra, cache=cache)  # fills the compilation cache
            result["warm"] = run_session(project, args.session, extra, cache=cache)
            result["warm"]["note"] = "third run: dataset reused, compiled steps from the cache the second run filled"
    platform_name = "cpu"
    try:
        subprocess.run(["nvidia-smi"], capture_output=True, check=True)
        platform_name = "gpu"
    except (OSError, subprocess.CalledProcessError):
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"session_{args.session}_{platform_name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for kind in ("cold", "warm"):
        r = result[kind]
        print(f"{kind}: {r['status']} in {r['session_elapsed_s']:.1f} s (process {r['process_wall_s']:.1f} s); "
              + ", ".join(f"{name} {step['duration_s']:.1f} s" for name, step in r["steps"].items()))
    print(f"wrote {out}")
    return 0 if all(result[k]["exit_status"] == 0 for k in ("cold", "warm")) else 1


if __name__ == "__main__":
    sys.exit(main())
