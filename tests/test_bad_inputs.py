"""The catalogue of bad inputs: every command refuses each one cleanly, and touches nothing.

For every case: exit status 2, exactly one line on stderr that names the problem (the case's
pattern) and a fix, no traceback, and a hash of the data, run and session directories is the
same before and after. The commands run in this process through `lumi_jax.cli.main` (or
`lumi_jax.session.main`), so the catalogue costs no interpreter start-ups; a few need a process
of their own (another writer holding the run, a mesh over four simulated devices, real `make`).

`benchmarks/reliability_catalogue.py` runs this file and records the count in
benchmarks/results/reliability.json; docs/reliability.md lists what the catalogue found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from disk_state import tree_hash, tree_stamp

from lumi_jax import cli, session
from lumi_jax.config import TrainConfig
from lumi_jax.data.prepare import prepare_dataset
from lumi_jax.errors import exit_on_user_error
from lumi_jax.flags import ArgumentParser

REPO = Path(__file__).resolve().parent.parent
FIX_WORDS = ("use ", "give ", "choose ", "prepare", "run ", "train", "pass ", "add ", "remove", "drop ", "wait",
             "resume", "fix ", "lower ", "set ", "see --help", "check", "leave ", "move ", "copy ", "install",
             "retrain", "stop ", "import ", "delete", "rename", "export ", "point at", "must be")
pytestmark = pytest.mark.usefixtures("compilation_cache")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # `lumi ...` (or `session ...` for python -m lumi_jax.session); {names} filled in
    problem: str  # a regular expression the one stderr line must match
    how: str = "in-process"  # or "process" (its own interpreter), "make", "held" (another writer holds the run)
    env: tuple[tuple[str, str], ...] = ()
    needs: str = ""  # "FILE:CALL" a module must make for this refusal (until it does, the case is skipped)


def case(name: str, argv: str, problem: str, how: str = "in-process", needs: str = "", **env: str) -> Case:
    return Case(name, tuple(argv.split("|")) if "|" in argv else tuple(argv.split()), problem, how,
                tuple(env.items()), needs)


CASES = [
    # --- paths: missing, a file for a directory and the reverse, a binary file as text --------------
    case("prepare-missing-source", "prepare --source {w}/nothing.txt --out {w}/data/new", r"nothing\.txt"),
    case("prepare-binary-source", "prepare --source {w}/binary.txt --out {w}/data/new", r"UTF-8"),
    case("prepare-empty-directory-source", "prepare --source {w}/empty --out {w}/data/new", r"no .txt or .md files"),
    case("prepare-out-is-a-file", "prepare --source sample --out {w}/notes.txt --force", r"notes\.txt.*not a directory"),
    case("data-info-missing", "data-info {w}/data/nothing", r"no such dataset directory"),
    case("data-info-file-for-directory", "data-info {w}/notes.txt", r"notes\.txt: is a file, not a dataset directory"),
    case("train-missing-data", "train --model micro --data {w}/data/nothing --out {w}/runs/new", r"no such dataset"),
    case("train-data-is-a-file", "train --model micro --data {w}/notes.txt --out {w}/runs/new", r"notes\.txt"),
    case("train-out-is-a-file", "train --model micro --data {w}/data/good --out {w}/notes.txt --steps 4 --warmup 1",
         r"notes\.txt.*(file|directory)", needs="train.py:RunLock("),
    case("train-missing-model", "train --model {w}/nothing.json --data {w}/data/good --out {w}/runs/new",
         r"nothing\.json.*no such model config"),
    case("train-binary-model", "train --model {w}/binary.json --data {w}/data/good --out {w}/runs/new", r"UTF-8"),
    case("train-recipe-is-a-directory", "train --model micro --recipe {w}/empty --data {w}/data/good --out {w}/runs/new",
         r"is a directory"),
    case("train-dangling-symlink-model", "train --model {w}/dangling.json --data {w}/data/good --out {w}/runs/new",
         r"dangling\.json"),
    case("generate-missing-run", "generate --run {w}/runs/nothing --prompt hi", r"no such run directory"),
    case("generate-run-is-a-file", "generate --run {w}/notes.txt --prompt hi", r"notes\.txt: is a file, not a run"),
    case("generate-missing-prompts-file", "generate --run {w}/runs/good --prompts {w}/nothing.txt", r"nothing\.txt"),
    case("generate-binary-prompts-file", "generate --run {w}/runs/good --prompts {w}/binary.txt", r"binary\.txt"),
    case("evaluate-not-a-run", "evaluate --run {w}/empty", r"not a lumi run"),
    case("assess-missing-run", "assess --run {w}/runs/nothing", r"nothing"),
    case("sft-missing-from", "sft --from {w}/runs/nothing --data {w}/data/good --out {w}/runs/new", r"no such run"),
    case("architecture-missing-config", "architecture {w}/nothing.json", r"nothing\.json"),
    case("export-missing-run", "export --run {w}/runs/nothing --out {w}/exported", r"no such run"),
    case("import-missing-source", "import --from {w}/nothing --out {w}/runs/new", r"nothing"),
    # --- values: zero, negative, NaN, huge, non-numeric ---------------------------------------------
    case("train-steps-zero", "train --model micro --data {w}/data/good --out {w}/runs/new --steps 0", r"steps"),
    case("train-steps-negative", "train --model micro --data {w}/data/good --out {w}/runs/new --steps -5", r"-5"),
    case("train-lr-nan", "train --model micro --data {w}/data/good --out {w}/runs/new --lr nan", r"nan"),
    case("train-lr-not-a-number", "train --model micro --data {w}/data/good --out {w}/runs/new --lr abc", r"abc"),
    case("train-batch-huge", "train --model micro --data {w}/data/good --out {w}/runs/new --batch-size 1000000000000",
         r"batch", needs="train.py:check_batch_fits("),
    case("train-context-huge", "train --model micro --data {w}/data/good --out {w}/runs/new --context 100000",
         r"context"),
    case("train-budget-negative", "train --model micro --data {w}/data/good --out {w}/runs/new --time-budget -1",
         r"time_budget|budget"),
    case("train-warmup-negative", "train --model micro --data {w}/data/good --out {w}/runs/new --warmup -1", r"warmup"),
    case("train-eval-every-text", "train --model micro --data {w}/data/good --out {w}/runs/new --eval-every often",
         r"often"),
    case("generate-temperature-nan", "generate --run {w}/runs/good --prompt hi --temperature nan", r"temperature"),
    case("generate-zero-tokens", "generate --run {w}/runs/good --prompt hi --max-new-tokens 0", r"max-new-tokens|tokens"),
    case("generate-more-tokens-than-context", "generate --run {w}/runs/good --prompt hi --max-new-tokens 100000",
         r"context|tokens"),
    case("generate-top-p-above-one", "generate --run {w}/runs/good --prompt hi --top-p 1.5", r"top-p"),
    case("prepare-vocab-zero", "prepare --source sample --out {w}/data/new --vocab-size 0", r"vocab"),
    case("prepare-vocab-text", "prepare --source sample --out {w}/data/new --vocab-size big", r"big"),
    case("prepare-val-fraction-nan", "prepare --source sample --out {w}/data/new --val-fraction nan", r"val-fraction"),
    case("prepare-size-negative", "prepare --source sample --out {w}/data/new --size-mb -1", r"size"),
    case("prepare-size-nan", "prepare --source sample --out {w}/data/new --size-mb nan", r"size"),
    case("data-info-samples-negative", "data-info {w}/data/good --samples -1", r"samples"),
    case("cleanup-days-negative", "cleanup --days -1 --root {w}", r"days"),
    case("cleanup-days-nan", "cleanup --days nan --root {w}", r"days|nan"),
    case("session-time-text", "session quick --time abc", r"abc.*SESSION_TIME"),
    case("session-time-zero", "session prototype --time 0", r"SESSION_TIME"),
    case("session-time-nan", "session quick --time nan", r"SESSION_TIME"),
    case("session-time-huge", "session quick --time 1e12", r"SESSION_TIME"),
    case("session-steps-zero", "session quick --steps 0", r"0"),
    case("session-data-mb-negative", "session quick --data-mb -3", r"-3"),
    case("session-unknown", "session quik", r"unknown session"),
    case("session-run-missing", "session evaluation --run {w}/runs/nothing", r"MODEL_PATH"),
    case("monitor-interval-zero", "session monitor --interval 0", r"interval"),
    # --- configs: unknown keys, wrong types, inconsistent heads -------------------------------------
    case("model-unknown-key", "train --model {w}/unknown_key.json --data {w}/data/good --out {w}/runs/new",
         r"unknown field 'd_modle'"),
    case("model-wrong-type", "train --model {w}/wrong_type.json --data {w}/data/good --out {w}/runs/new",
         r"d_model.*integer"),
    case("model-inconsistent-heads", "train --model {w}/bad_heads.json --data {w}/data/good --out {w}/runs/new",
         r"n_heads"),
    case("recipe-unknown-key", "train --model micro --recipe {w}/recipe_unknown.json --data {w}/data/good --out {w}/runs/new",
         r"unknown field 'stpes'"),
    case("architecture-inconsistent-heads", "architecture {w}/bad_heads.json", r"n_heads"),
    case("session-config-invalid", "session quick --config {w}/bad_heads.json", r"n_heads"),
    # --- datasets: truncated, out-of-range ids, another tokenizer, missing meta fields ---------------
    case("dataset-truncated-bin", "train --model micro --data {w}/data/truncated --out {w}/runs/new --steps 4 --warmup 1",
         r"train\.bin has .* bytes"),
    case("dataset-ids-out-of-range", "train --model micro --data {w}/data/outofrange --out {w}/runs/new --steps 4 --warmup 1",
         r"train\.bin.*token id 600.*vocabulary", needs="train.py:check_ids("),
    case("evaluate-ids-out-of-range", "evaluate --run {w}/runs/good --data {w}/data/outofrange-val --quick",
         r"val\.bin.*token id"),
    case("dataset-wrong-vocab", "train --model tiny --data {w}/data/good --out {w}/runs/new --steps 4 --warmup 1",
         r"512 ids.*4096"),
    case("dataset-replaced-tokenizer", "train --model micro --data {w}/data/swapped --out {w}/runs/new --steps 4 --warmup 1",
         r"tokenizer.*replaced|SHA-256"),
    case("dataset-meta-missing-field", "train --model micro --data {w}/data/badmeta --out {w}/runs/new --steps 4 --warmup 1",
         r"meta\.json lacks vocab_size"),
    case("dataset-meta-not-json", "data-info {w}/data/badjson", r"meta\.json is not valid JSON"),
    case("data-info-verify-changed-bin", "data-info {w}/data/flipped --verify --samples 0", r"sha256"),
    case("sft-on-plain-text", "sft --from {w}/runs/good --data {w}/data/good --out {w}/runs/new --steps 2",
         r"not instructions"),
    # --- runs: no checkpoint, damaged checkpoints, a run of another model ---------------------------
    case("generate-no-checkpoint", "generate --run {w}/runs/nockpt --prompt hi", r"no checkpoints"),
    case("generate-damaged-step", "generate --run {w}/runs/garbled --step 4 --prompt hi", r"step 4 is damaged"),
    case("evaluate-every-checkpoint-damaged", "evaluate --run {w}/runs/allbad --quick", r"no readable checkpoint"),
    case("train-resume-without-checkpoint",
         "train --data {w}/data/good --out {w}/runs/nockpt --resume --steps 4 --warmup 1", r"no checkpoint"),
    case("train-into-a-run-of-another-model",
         "train --model {w}/other_model.json --data {w}/data/good --out {w}/runs/good --steps 8 --warmup 1",
         r"different model config"),
    case("generate-run-config-of-another-model", "generate --run {w}/runs/mismatch --prompt hi",
         r"holds another model than the run.s config\.json"),
    case("import-out-is-a-file", "import --from {w}/empty --out {w}/notes.txt", r"notes\.txt|config\.json"),
    case("export-out-is-a-file", "export --run {w}/runs/good --out {w}/notes.txt", r"notes\.txt"),
    case("sft-out-is-the-pretrained-run", "sft --from {w}/runs/good --data {w}/data/good --out {w}/runs/good",
         r"pretrained run itself"),
    case("export-step-missing", "export --run {w}/runs/good --out {w}/exported --step 3", r"no checkpoint for step 3"),
    # --- meshes that do not divide ----------------------------------------------------------------------
    case("mesh-bad-spec", "train --model micro --data {w}/data/good --out {w}/runs/new --mesh data=x", r"mesh"),
    case("mesh-more-devices-than-here", "train --model micro --data {w}/data/good --out {w}/runs/new --mesh data=3",
         r"device"),
    case("mesh-batch-does-not-divide",
         "train --model micro --data {w}/data/good --out {w}/runs/new --batch-size 6 --mesh data=4 --steps 4 --warmup 1",
         r"batch", how="process", XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    # --- a second writer ----------------------------------------------------------------------------------
    case("second-writer", "train --model micro --data {w}/data/good --out {w}/runs/held --steps 4 --warmup 1",
         r"another process is writing.*PID", how="held", needs="train.py:RunLock("),
    case("import-into-a-run-being-written", "import --from {w}/hf --out {w}/runs/held",
         r"another process is writing.*PID", how="held", needs="interop/import_command.py:RunLock("),
    # --- Make variables, through real make --------------------------------------------------------------
    case("make-session-time-text", "session-quick SESSION_TIME=abc", r"abc.*SESSION_TIME", how="make"),
    case("make-train-steps-text", "train|MODEL=micro|DATA={w}/data/good|RUN={w}/runs/new|STEPS=ten", r"ten",
         how="make"),
    case("make-generate-missing-run", "generate|MODEL_PATH={w}/runs/nothing", r"no such run", how="make"),
]


# ---------------------------------------------------------------------------------------------
# The world the cases run against: one dataset, one trained run, and broken copies of both.


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


def set_token(path: Path, offset: int, value: int) -> None:
    tokens = np.memmap(path, dtype=np.uint16, mode="r+")
    tokens[offset] = value
    tokens.flush()
    del tokens


def garble_step(step_dir: Path) -> None:
    arrays = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    flip(max(arrays, key=lambda p: p.stat().st_size))


@pytest.fixture(scope="module")
def world(tmp_path_factory, dataset_dir, micro_config):
    from lumi_jax.train import train

    w = tmp_path_factory.mktemp("world")
    data, runs = w / "data", w / "runs"
    data.mkdir()
    runs.mkdir()
    (w / "empty").mkdir()
    (w / "notes.txt").write_text("a file, not a directory\n")
    (w / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (w / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 10)
    (w / "dangling.json").symlink_to(w / "gone.json")
    micro = json.loads((REPO / "config" / "architectures" / "micro.json").read_text())
    (w / "unknown_key.json").write_text(json.dumps({**micro, "d_modle": 64}))
    (w / "wrong_type.json").write_text(json.dumps({**micro, "d_model": "64"}))
    (w / "bad_heads.json").write_text(json.dumps({**micro, "n_heads": 3}))
    (w / "other_model.json").write_text(json.dumps({**micro, "name": "other", "n_layers": 3}))
    (w / "recipe_unknown.json").write_text(json.dumps({"stpes": 10}))

    good = data / "good"
    shutil.copytree(dataset_dir, good)
    for name in ("truncated", "outofrange", "outofrange-val", "swapped", "badmeta", "badjson", "flipped"):
        shutil.copytree(good, data / name)
    with open(data / "truncated" / "train.bin", "r+b") as file:
        file.truncate((data / "truncated" / "train.bin").stat().st_size - 3)
    set_token(data / "outofrange" / "train.bin", 100, 600)  # vocab 512
    set_token(data / "outofrange-val" / "val.bin", 10, 600)
    other = w / "other-data"
    prepare_dataset("sample", other, vocab_size=512, size_mb=0.05, seed=1, log=None)
    shutil.copy(other / "tokenizer.model", data / "swapped" / "tokenizer.model")
    shutil.rmtree(other)
    meta = json.loads((good / "meta.json").read_text())
    (data / "badmeta" / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "vocab_size"}))
    (data / "badjson" / "meta.json").write_text("{not json")
    set_token(data / "flipped" / "train.bin", 50, int(np.fromfile(good / "train.bin", np.uint16)[50]) ^ 1)

    config = TrainConfig(steps=4, batch_size=4, context=32, lr=3e-3, warmup=1, eval_every=0, save_every=2,
                         log_every=1)
    train(config, micro_config, good, runs / "good", show_progress=False)
    (runs / "nockpt").mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(runs / "good" / name, runs / "nockpt" / name)
    for name, steps in (("garbled", (4,)), ("allbad", (2, 4))):
        shutil.copytree(runs / "good", runs / name)
        for step in steps:
            garble_step(runs / name / "checkpoints" / str(step))
    shutil.copytree(runs / "good", runs / "mismatch")  # its config.json names a model its checkpoints are not
    stored = json.loads((runs / "mismatch" / "config.json").read_text())
    stored["model"]["n_layers"] = 3
    (runs / "mismatch" / "config.json").write_text(json.dumps(stored))
    (runs / "held").mkdir()
    from lumi_jax.interop.hf import export_hf

    export_hf(runs / "good", w / "hf")  # a Hugging Face directory to import
    return w


def disk_state(w: Path) -> tuple[str, str]:
    """The bytes of this test's own directories, and the sizes and times of the repository's."""
    return tree_hash(w / "data", w / "runs", w / "empty"), tree_stamp(REPO / "sessions", REPO / "data", REPO / "runs")


# ---------------------------------------------------------------------------------------------
# Running one case.


def lumi_in_process(argv: list[str]) -> int:
    """`lumi ARGV` in this process; `session ...` is `python -m lumi_jax.session ...`."""
    if argv[0] == "session":
        return session.main(argv[1:])
    if argv[0] in cli.COMMANDS:
        return cli.main(argv)
    # export and import, until cli.COMMANDS lists them: the same parser and error handling
    module = {"export": "lumi_jax.interop.export_command", "import": "lumi_jax.interop.import_command"}[argv[0]]
    import importlib

    with exit_on_user_error():
        command = importlib.import_module(module)
        parser = ArgumentParser(prog=f"lumi {argv[0]}")
        command.add_arguments(parser)
        return int(command.run(parser.parse_args(argv[1:])) or 0)


HOLDER = textwrap.dedent("""
    import sys, time
    from lumi_jax.run_lock import RunLock
    with RunLock(sys.argv[1], command="lumi train --out " + sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
""")


def run_case(item: Case, w: Path, capsys) -> tuple[int, str]:
    argv = [part.format(w=w) for part in item.argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), **dict(item.env)}
    if item.how == "process":
        command = [sys.executable, "-m", "lumi_jax.session", *argv[1:]] if argv[0] == "session" else \
            [sys.executable, "-m", "lumi_jax.cli", *argv]
        result = subprocess.run(command, cwd=w, env=env, capture_output=True, text=True, timeout=600)
        return result.returncode, result.stderr
    if item.how == "make":
        result = subprocess.run(["make", "-s", "-o", ".venv/.install-stamp", "-C", str(REPO), *argv], cwd=w, env=env,
                                capture_output=True, text=True, timeout=600)
        # make adds its own `make: *** [Makefile:N: target] Error 2`; the command's line is the rest
        return result.returncode, "".join(line for line in result.stderr.splitlines(keepends=True)
                                          if not line.startswith("make"))
    capsys.readouterr()
    try:
        status = lumi_in_process(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


@pytest.fixture
def holder(world):
    """Another process holding runs/held, as a running `lumi train` would (started before the hash)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(world / "runs" / "held")], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()
    process.stdout.close()


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(item, world, capsys, monkeypatch, request):
    if item.how == "make" and shutil.which("make") is None:
        pytest.skip("no make here")
    if item.needs:
        module, call = item.needs.split(":")
        if call not in (REPO / "lumi_jax" / module).read_text(encoding="utf-8"):
            pytest.skip(f"{module} does not call {call}) yet")
    if item.how == "held":
        request.getfixturevalue("holder")
    monkeypatch.chdir(world)
    monkeypatch.setenv("COLUMNS", "200")
    before = disk_state(world)
    status, err = run_case(item, world, capsys)
    after = disk_state(world)
    lines = err.strip().splitlines()
    if os.environ.get("LUMI_CATALOGUE_RECORD"):  # benchmarks/reliability_catalogue.py collects the lines
        with open(os.environ["LUMI_CATALOGUE_RECORD"], "a", encoding="utf-8") as record:
            record.write(json.dumps({"name": item.name, "how": item.how, "exit_status": status, "stderr": err,
                                     "unchanged": before == after}) + "\n")
    assert "Traceback" not in err, err
    assert status == 2, f"exit status {status}; stderr: {err}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    line = lines[0]
    assert re.search(item.problem, line), f"the line does not name the problem ({item.problem}): {line}"
    assert any(word in line for word in FIX_WORDS), f"the line names no fix: {line}"
    assert before == after, f"the data or run directories changed: {line}"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40
    kinds = {c.name.split("-")[0] for c in CASES}
    assert {"prepare", "train", "sft", "generate", "evaluate", "assess", "data", "architecture", "export", "import",
            "session", "make"} <= kinds


def catalogue() -> list[dict]:
    """The cases as records, for benchmarks/reliability_catalogue.py."""
    return [{"name": c.name, "argv": " ".join(c.argv), "how": c.how} for c in CASES]


if __name__ == "__main__":  # list the cases
    for record in catalogue():
        print(json.dumps(record))


def test_the_repository_stamp_sees_a_rewrite_a_new_file_and_a_removal(tmp_path):
    """The repository's directories are compared by size and modification time, not bytes:
    each kind of change a command could make must still show."""
    kept = tmp_path / "run" / "config.json"
    kept.parent.mkdir()
    kept.write_text('{"steps": 10}')
    os.utime(kept, ns=(1_000_000_000, 1_000_000_000))  # written long ago, as a user's runs are
    stamps = [tree_stamp(tmp_path)]
    kept.write_text('{"steps": 99}')  # the same size, other bytes
    stamps.append(tree_stamp(tmp_path))
    (tmp_path / "run" / "new.json").write_text("{}")
    stamps.append(tree_stamp(tmp_path))
    kept.unlink()
    stamps.append(tree_stamp(tmp_path))
    assert len(set(stamps)) == 4
    assert tree_stamp(tmp_path) == stamps[-1]  # and nothing changed reads the same
