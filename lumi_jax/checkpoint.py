"""Checkpoints: Orbax's CheckpointManager, asynchronous, keeping the last N, never trusting a bad one.

A checkpoint `checkpoints/STEP/` holds three items:

    params     the float32 parameter pytree (sharded arrays are written shard by shard),
    opt_state  the Optax state (AdamW moments, counters),
    meta       JSON: step, RNG key data, loader position, the config hash, the tokenizer hash.

Orbax writes each save into a temporary directory and renames it when complete, so a save cut
short (kill -9, power loss) never appears as a step. Once a save has finished, the store writes
`STEP/lumi_manifest.json`: the size and sha256 of every file of the step. A restore checks the
files it reads against it first, and checks that the parameters it read are finite; a step that
fails (garbled bytes, a truncated or deleted file) is skipped with one line on stderr and the
previous one is used. A step saved before manifests existed, or whose manifest a kill -9 cut
off, is restored without one (the finite check still applies). An error that says nothing about
the files' content (permission denied, an I/O error, too many open files) is not damage: it is
reported as what it is, and no step is skipped or set aside for it.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lumi_jax.errors import UserError
from lumi_jax.files import file_sha256, write_json_atomic

MANIFEST_NAME = "lumi_manifest.json"
# errno values that say "cannot read now", not "the bytes are wrong": never a reason to skip a step.
TRANSIENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EMFILE, errno.ENFILE,
                    errno.ENOMEM, errno.ENOSPC, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR}
# The same, as TensorStore and Orbax spell them inside the messages of the errors they raise.
TRANSIENT_WORDS = ("PERMISSION_DENIED", "Permission denied", "Input/output error", "UNAVAILABLE",
                   "RESOURCE_EXHAUSTED", "Too many open files", "Cannot allocate memory", "DEADLINE_EXCEEDED")


class CheckpointDamaged(Exception):
    """The content of a checkpoint step is wrong: a file differs from its manifest, is missing,
    or the values read are not finite."""


class CheckpointMismatch(Exception):
    """The checkpoint is whole, but of another model than the one asked for: not damage."""


# The model fields that decide the parameters' shapes: what a checkpoint and its run must agree on.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "multiple_of",
                "tie_embeddings")
MISMATCH_WORDS = ("tree structures do not match", "is not compatible with the stored shape")


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_manifest(step_dir: Path) -> None:
    """`STEP/lumi_manifest.json`: the size and sha256 of every file of a finished step."""
    files = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith(f".{MANIFEST_NAME}"):
            files[path.relative_to(step_dir).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    write_json_atomic(step_dir / MANIFEST_NAME, {"format": 1, "files": files})


def verify_manifest(step_dir: Path, items: tuple[str, ...] | None = None) -> bool:
    """Check the files of `items` (item directories such as params; None: all) against the step's
    manifest. Returns False when the step has none; raises CheckpointDamaged on a mismatch, and
    OSError when a file cannot be read."""
    manifest_path = step_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return False
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointDamaged(f"its {MANIFEST_NAME} is not readable JSON") from None
    for name, expected in files.items():
        if items is not None and "/" in name and name.split("/", 1)[0] not in items:
            continue
        path = step_dir / name
        if not path.is_file():
            raise CheckpointDamaged(f"{name} is missing")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointDamaged(f"{name} has {path.stat().st_size} bytes, not {expected['bytes']}")
        if file_sha256(path) != expected["sha256"]:
            raise CheckpointDamaged(f"the sha256 of {name} differs from its manifest")
    return True


def check_finite(tree: Any, what: str) -> None:
    """Training never saves a non-finite state (the divergence guard keeps the last good one), so
    a NaN or an infinity read back means the bytes were damaged."""
    floating = [leaf for leaf in jax.tree.leaves(tree)
                if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]
    if floating and not bool(jax.device_get(_all_finite(floating))):
        raise CheckpointDamaged(f"its {what} hold values that are not finite")


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    """One compiled reduction (a replicated scalar, so it also reads on several hosts)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def is_transient(error: BaseException) -> bool:
    """An error about reading (permissions, I/O, resources), not about what the files hold."""
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return True
    text = str(error)
    return not isinstance(error, (CheckpointDamaged, FileNotFoundError)) and any(w in text for w in TRANSIENT_WORDS)


def first_line(error: BaseException) -> str:
    """A short account of an error: TensorStore's long driver chains become `NOT_FOUND: ... NAME`."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    code = re.match(r"([A-Z_]{4,}):", text)
    reading = re.search(r'Error (reading|opening) "([^"]+)"[^"]*$', text) or re.search(r'Error reading "([^"]+)"', text)
    if code and reading:
        return f"{code.group(1)} reading {reading.groups()[-1]}"
    text = text[:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def quiet_closed_loop_callbacks() -> None:
    """After a failed restore, TensorStore's aborted reads call back into Orbax's closed event loop
    and each prints `RuntimeError: Event loop is closed` (after a shape mismatch, `Encountered error
    while reading array index`) through sys.unraisablehook: harmless noise around the one line that
    matters. Drop exactly those (installed once, the first time a step fails)."""
    previous = sys.unraisablehook
    if getattr(previous, "lumi_quiet", False):
        return

    def hook(unraisable):
        text = str(unraisable.exc_value)
        if "Event loop is closed" in text or "Encountered error while reading array index" in text:
            return
        previous(unraisable)

    hook.lumi_quiet = True
    sys.unraisablehook = hook

# Orbax logs every save and restore at INFO through absl; training has its own progress output.
logging.getLogger("absl").setLevel(logging.WARNING)
# Opening checkpoints read-only (to load a run) is deliberate, not worth warnings.
logging.getLogger("absl").addFilter(lambda record: "read only" not in record.getMessage() and "read_only=True" not in record.getMessage())


class CheckpointStore:
    """Save and restore training checkpoints in one run's `checkpoints/` directory."""

    def __init__(self, directory: Path | str, *, keep: int = 3, read_only: bool = False,
                 report: Callable[[str], None] = stderr_line):
        self.directory = Path(directory).absolute()
        self.report = report  # where the one line about a damaged step goes
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=not read_only,
            cleanup_tmp_directories=not read_only,  # leftovers of a save that was killed
        )
        if read_only and not self.directory.is_dir():
            raise UserError(f"{self.directory}: no checkpoints directory; train the run first (lumi train)")
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("params", "opt_state", "meta"))
        self.unreadable: list[int] = []  # steps `restore_latest_good` had to skip
        self.damage: dict[int, str] = {}  # and why
        self.unsealed: list[int] = []  # saved, but the manifest is written once the save has finished

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
        """Start an asynchronous save; the arrays are copied before this returns."""
        if step in self.manager.all_steps():  # listed as soon as an asynchronous save starts
            return  # already saved (e.g. a signal arrived right after a save_every step)
        self.seal()  # Orbax waits for the previous save before starting one: seal it first
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.unsealed.append(step)

    def seal(self) -> None:
        """Wait for the pending save, then write the manifest of every step saved since the last seal."""
        self.manager.wait_until_finished()  # on several hosts: once every host's files are committed
        for step in self.unsealed if jax.process_index() == 0 else []:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # not already removed by max_to_keep
                write_manifest(step_dir)
        self.unsealed = []

    def sealed_steps(self) -> list[int]:
        """The steps whose save finished and whose manifest was written: the ones a restore trusts."""
        return [step for step in self.steps() if (self.directory / str(step) / MANIFEST_NAME).is_file()]

    def wait(self) -> None:
        self.seal()

    def close(self) -> None:
        self.seal()
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        """Only the JSON part of a checkpoint: step, RNG, loader position, config, tokenizer hash."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any = None,
                expect_model: dict | None = None) -> dict:
        """Restore one step: {"params", "opt_state" (when asked), "meta"}, after checking its files
        against the manifest and, given `expect_model` (a model config as a dict), that the step holds
        that model. Raises CheckpointDamaged, CheckpointMismatch, or whatever Orbax raises."""
        wanted = ("params", "meta") if abstract_opt_state is None else ("params", "opt_state", "meta")
        verify_manifest(self.directory / str(step), wanted)
        if expect_model is not None:
            stored = ((self.read_meta(step).get("config") or {}).get("model")) or {}
            differ = [f"{field} {stored[field]} (config.json: {expect_model.get(field)})" for field in SHAPE_FIELDS
                      if field in stored and stored[field] != expect_model.get(field)]
            if differ:
                raise CheckpointMismatch(", ".join(differ))
        items = {
            "params": ocp.args.StandardRestore(abstract_params),
            "meta": ocp.args.JsonRestore(),
        }
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        restored = {name: restored[name] for name in items}
        check_finite(restored["params"], "parameters")
        if "opt_state" in restored:
            check_finite(restored["opt_state"], "optimizer state")
        return restored

    def restore_latest_good(self, abstract_params: Any, abstract_opt_state: Any = None,
                            step: int | None = None, expect_model: dict | None = None) -> dict | None:
        """The newest readable checkpoint (or exactly `step`), falling back past corrupt ones.

        Returns None when there is no checkpoint at all. A checkpoint of another model than
        `expect_model` (or of other shapes than the abstract trees) is a UserError, not damage.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise UserError(
                    f"{self.directory}: no checkpoint for step {step}; available steps: "
                    f"{', '.join(map(str, steps)) or 'none'}"
                )
            steps = [step]
        skipped: list[str] = []
        for index in range(len(steps) - 1, -1, -1):
            candidate = steps[index]
            try:
                restored = self.restore(candidate, abstract_params, abstract_opt_state, expect_model)
            except Exception as error:
                quiet_closed_loop_callbacks()
                if isinstance(error, CheckpointMismatch) or any(w in str(error) for w in MISMATCH_WORDS):
                    what = str(error) if isinstance(error, CheckpointMismatch) else first_line(error)
                    raise UserError(
                        f"{self.directory}: checkpoint step {candidate} holds another model than the run's "
                        f"config.json describes ({what}); put back the config.json the run was trained with, "
                        "or train into a new --out directory") from None
                if is_transient(error):  # cannot read now: not damage, so nothing is skipped
                    raise UserError(
                        f"{self.directory / str(candidate)}: could not be read ({first_line(error)}); this is "
                        "not damage: check the permissions and the disk, then run again") from None
                reason = str(error) if isinstance(error, CheckpointDamaged) else f"unreadable: {first_line(error)}"
                self.unreadable.append(candidate)
                self.damage[candidate] = reason
                if step is not None:
                    raise UserError(f"{self.directory}: checkpoint step {step} is damaged ({reason}); choose another "
                                    f"step ({', '.join(map(str, self.steps()))}) or none for the newest good one") from None
                skipped.append(f"step {candidate} ({reason})")
                continue
            if skipped:  # one line, however many steps were passed over
                self.report(f"checkpoint {', '.join(skipped)} in {self.directory} "
                            f"{'is' if len(skipped) == 1 else 'are'} damaged; using step {candidate} instead")
            return restored
        if steps:
            raise UserError(
                f"{self.directory}: no readable checkpoint (tried steps {', '.join(map(str, reversed(steps)))}: "
                f"{'; '.join(skipped)}); the files are damaged: retrain into a new --out directory"
            )
        return None

    def set_aside_unreadable(self, destination: Path) -> list[Path]:
        """Move the skipped steps out of the way (never delete them), so training can save
        those steps again; returns where they went."""
        moved = []
        for step in self.unreadable if jax.process_index() == 0 else ():  # one mover; every process reloads
            source = self.directory / str(step)
            if source.exists():
                target = Path(destination) / f"{step}-{int(time.time())}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, target)
                moved.append(target)
        self.unreadable = []
        if jax.process_count() > 1:  # the others reload once the steps have moved
            multihost_utils.sync_global_devices("lumi checkpoints: unreadable steps set aside")
        self.manager.reload()
        return moved


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings a restore should produce."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )
