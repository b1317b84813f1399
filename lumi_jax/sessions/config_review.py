"""The architecture session's steps: validate every config, estimate memory against this device,
compare with the reference models, and suggest what follows from the numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from lumi_jax.config import (
    ARCHITECTURES_DIR,
    CONFIG_DIR,
    REPO_ROOT,
    is_model_config,
    model_config_from_dict,
    read_json,
)
from lumi_jax.errors import UserError
from lumi_jax.sessions.runner import Step, StepContext, StepFailed
from lumi_jax.tables import print_table


def display_path(path: Path) -> str:
    """A path as short as it can be said: relative to here, or to the repository."""
    for base in (Path.cwd(), REPO_ROOT):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def config_files(target: str | None) -> list[Path]:
    """Every JSON file the architecture session looks at: CONFIG (a file, directory or name) or config/."""
    if target is None:
        return sorted(CONFIG_DIR.rglob("*.json"))
    path = Path(target)
    if not path.exists() and (ARCHITECTURES_DIR / f"{target}.json").exists():
        path = ARCHITECTURES_DIR / f"{target}.json"
    if not path.exists():
        raise UserError(f"CONFIG / --config {target}: no such file or directory; "
                        "give a model config such as config/architectures/tiny.json, or leave it unset for all")
    return sorted(path.rglob("*.json")) if path.is_dir() else [path]


def validate_configs(ctx: StepContext, target: str | None) -> None:
    table = Table(title="Configs", title_justify="left")
    for column in ("file", "result", "note"):
        table.add_column(column)
    valid, invalid, skipped = [], [], []
    for path in config_files(target):
        try:
            data = read_json(path)
            if not is_model_config(data):
                skipped.append(str(path))
                table.add_row(display_path(path), "[dim]skipped[/]", "not a model config (a recipe, prompts, ...)")
                continue
            config = model_config_from_dict(data, str(path))
        except UserError as error:
            invalid.append(str(error))
            table.add_row(display_path(path), "[bold red]INVALID[/]", str(error))
            continue
        valid.append((str(path), config))
        table.add_row(display_path(path), "[green]valid[/]", config.description)
    print_table(ctx.console, table)
    ctx.state["configs"] = valid
    ctx.metrics.update(valid=len(valid), invalid=invalid, skipped=skipped,
                       headline=f"{len(valid)} valid, {len(invalid)} invalid, {len(skipped)} skipped")
    if invalid:
        raise StepFailed(f"{len(invalid)} invalid config(s): " + " | ".join(invalid))
    if not valid:
        raise StepFailed(f"no model config found in {target or CONFIG_DIR}")


def analyse_configs(ctx: StepContext) -> None:
    from lumi_jax import architecture
    from lumi_jax.config import config_hash

    device = architecture.detected_device_memory()
    reports = [architecture.analyse(config, device=device) for _, config in ctx.state["configs"]]
    architecture.print_report(reports, [])
    ctx.state["reports"] = reports
    ctx.session.set_config_hash(config_hash([r["config"] for r in reports]))
    device_name, device_bytes = device
    ctx.metrics["device"] = {"name": device_name, "bytes": device_bytes}
    ctx.metrics["models"] = {
        r["name"]: {
            "params": r["params"]["total"],
            "published_params": r["published_params"],
            "train_bytes": r["memory"]["training"][r["config"]["dtype"]]["total"],
            "inference_bytes": r["memory"]["inference"]["total"],
            "fits_for_training": bool(device_bytes) and
            r["memory"]["training"][r["config"]["dtype"]]["total"] <= device_bytes,
            "conformance_warnings": [c["name"] for c in r["conformance"] if c["status"] != "pass"],
        }
        for r in reports
    }
    fitting = sum(m["fits_for_training"] for m in ctx.metrics["models"].values())
    ctx.metrics["headline"] = f"{len(reports)} models; {fitting} fit {device_name} for training"


def suggest(ctx: StepContext) -> None:
    reports = ctx.state["reports"]
    notes = [f"{r['name']}: {note}" for r in reports for note in r["suggestions"]]
    notes += [f"{r['name']}: conformance warning: {c['name']} ({c['detail']})"
              for r in reports for c in r["conformance"] if c["status"] != "pass"]
    trainable = [r for r in reports if r["published_params"] is None]
    device_bytes = reports[0]["memory"]["device"]["bytes"] if reports else None
    fitting = [r for r in trainable if device_bytes and
               r["memory"]["training"][r["config"]["dtype"]]["total"] <= 0.8 * device_bytes]
    if fitting:
        largest = max(fitting, key=lambda r: r["params"]["total"])
        notes.append(f"the largest of your models that trains comfortably here (batch 8, under 80% of memory) "
                     f"is {largest['name']} ({largest['params']['total'] / 1e6:.1f}M parameters)")
    for note in notes:
        ctx.console.print(f"• {note}")
    if not notes:
        ctx.console.print("no suggestions: every config conforms and fits this device")
    ctx.metrics["suggestions"] = notes
    ctx.metrics["headline"] = f"{len(notes)} suggestion(s)"


def architecture_steps(args: argparse.Namespace) -> list[Step]:
    return [
        Step("validate configs", lambda ctx: validate_configs(ctx, args.config), 1,
             "read every model config; report invalid ones with their field and fix"),
        Step("analyse", analyse_configs, 3,
             "exact counts, memory estimates against this device, conformance, reference models"),
        Step("suggest", suggest, 1, "what follows from the numbers"),
    ]
