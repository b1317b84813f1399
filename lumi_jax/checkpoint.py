"""Checkpoints: Orbax's CheckpointManager, asynchronous, keeping the last N, never trusting a bad one.

A checkpoint `checkpoints/STEP/` holds three items:

    params     the float32 parameter pytree (sharded arrays are written shard by shard),
    opt_state  the Optax state (AdamW moments, counters),
    meta       JSON: step, RNG key data, loader position, the config hash, the tokenizer hash.

Orbax writes each save into a temporary directory and renames it when complete, so a save cut
short (kill -9, power loss) never appears as a step. A step that is listed but cannot be read
(a truncated or deleted file) is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lumi_jax.errors import UserError

# Orbax logs every save and restore at INFO through absl; training has its own progress output.
logging.getLogger("absl").setLevel(logging.WARNING)
# Opening checkpoints read-only (to load a run) is deliberate, not worth warnings.
logging.getLogger("absl").addFilter(lambda record: "read only" not in record.getMessage() and "read_only=True" not in record.getMessage())


class CheckpointStore:
    """Save and restore training checkpoints in one run's `checkpoints/` directory."""

    def __init__(self, directory: Path | str, *, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
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

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
        """Start an asynchronous save; the arrays are copied before this returns."""
        if step in self.manager.all_steps():  # listed as soon as an asynchronous save starts
            return  # already saved (e.g. a signal arrived right after a save_every step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        """Only the JSON part of a checkpoint: step, RNG, loader position, config, tokenizer hash."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any = None) -> dict:
        """Restore one step: {"params", "opt_state" (when asked), "meta"}. Raises if unreadable."""
        items = {
            "params": ocp.args.StandardRestore(abstract_params),
            "meta": ocp.args.JsonRestore(),
        }
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {name: restored[name] for name in items}

    def restore_latest_good(self, abstract_params: Any, abstract_opt_state: Any = None,
                            step: int | None = None) -> dict | None:
        """The newest readable checkpoint (or exactly `step`), falling back past corrupt ones.

        Returns None when there is no checkpoint at all.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise UserError(
                    f"{self.directory}: no checkpoint for step {step}; available steps: "
                    f"{', '.join(map(str, steps)) or 'none'}"
                )
            steps = [step]
        for candidate in reversed(steps):
            try:
                return self.restore(candidate, abstract_params, abstract_opt_state)
            except Exception as error:  # any unreadable checkpoint: fall back to an older one
                self.unreadable.append(candidate)
                warnings.warn(
                    f"checkpoint step {candidate} in {self.directory} is unreadable "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                    "falling back to the previous one",
                    stacklevel=2,
                )
        if steps:
            raise UserError(
                f"{self.directory}: no readable checkpoint (tried steps {', '.join(map(str, steps))}); "
                "the files are damaged: retrain into a new --out directory"
            )
        return None


    def set_aside_unreadable(self, destination: Path) -> list[Path]:
        """Move the skipped steps out of the way (never delete them), so training can save
        those steps again; returns where they went."""
        moved = []
        for step in self.unreadable:
            source = self.directory / str(step)
            if source.exists():
                target = Path(destination) / f"{step}-{int(time.time())}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, target)
                moved.append(target)
        self.unreadable = []
        self.manager.reload()
        return moved


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings a restore should produce."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )
