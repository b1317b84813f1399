"""What a model config costs, and whether it is a faithful LLaMA: `lumi architecture CONFIG...`.

- Parameter counts come from the initialised shapes (`jax.eval_shape`, nothing allocated),
  grouped into embeddings, attention, MLP, norms and output head, and cross-checked against the
  closed-form formula below. Embeddings and the head are always counted (a tied head counts
  once, as its one shared matrix).
- Memory estimates for training (parameters, gradients, AdamW's two moments, activations with
  and without rematerialisation) and for inference (weights, the KV cache and, on a CPU, the
  decode-ready copies of some weights that generation adds). The activation
  model counts the tensors the backward pass keeps per layer; `tests/test_architecture.py` holds
  it within 20% of XLA's own figure for the compiled train step.
- LLaMA conformance checks, a table of reference models with their published counts, and
  suggestions that follow from the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax

from lumi_jax import model
from lumi_jax.config import (
    ARCHITECTURES_DIR,
    ModelConfig,
    is_model_config,
    llama_hidden_dim,
    model_config_from_dict,
    read_json,
)
from lumi_jax.errors import UserError
from lumi_jax.tables import print_table

GIB = 1024**3
MIB = 1024**2


# ---------------------------------------------------------------------------------------------
# Parameter counts


@dataclasses.dataclass(frozen=True)
class ParamCount:
    embeddings: int
    attention: int
    mlp: int
    norms: int
    head: int  # 0 when the head is tied to the embeddings

    @property
    def total(self) -> int:
        return self.embeddings + self.attention + self.mlp + self.norms + self.head


def count_params(config: ModelConfig) -> ParamCount:
    """Count from the real initialised shapes, grouped by where each tensor sits
    (model.count_params is the same count, ungrouped)."""
    groups = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.param_shapes(config)):
        names = [str(getattr(key, "key", key)) for key in path]
        if names[0] == "embed":
            group = "embeddings"
        elif names[0] == "output":
            group = "head"
        elif "attention" in names:
            group = "attention"
        elif "mlp" in names:
            group = "mlp"
        else:
            group = "norms"  # attention_norm, mlp_norm, final_norm
        groups[group] += model.count_params(leaf)
    return ParamCount(**groups)


def closed_form_params(config: ModelConfig) -> int:
    """The textbook formula: V·D (+ V·D untied) + L·(D·(H+2N)·K + H·K·D + 3·D·F + 2·D) + D."""
    D, F, K = config.d_model, config.ffn_dim, config.head_dim
    H, N, L, V = config.n_heads, config.kv_heads, config.n_layers, config.vocab_size
    attention = D * (H + 2 * N) * K + H * K * D
    per_layer = attention + 3 * D * F + 2 * D
    head = 0 if config.tie_embeddings else V * D
    return V * D + head + L * per_layer + D


# ---------------------------------------------------------------------------------------------
# Memory


def _bytes_per(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def activation_elements_per_layer(config: ModelConfig, batch: int, seq: int) -> dict[str, int]:
    """Elements one block keeps for its backward pass (without rematerialisation).

    Counted from model.py: the block input and its normalised copy, q/k/v before and after RoPE,
    the attention scores and their softmax (B·H·T·T each: the quadratic term), the attention
    output and its projection, the MLP input and its normalised copy, the gate, the up projection,
    silu(gate) and their product (B·T·F each), and the MLP's output.
    """
    B, T, D, F = batch, seq, config.d_model, config.ffn_dim
    qkv = B * T * (config.n_heads + 2 * config.kv_heads) * config.head_dim
    return {
        "residual_and_norms": 6 * B * T * D,
        "qkv_and_rope": 2 * qkv,
        "attention_scores": 2 * B * config.n_heads * T * T,
        "mlp_hidden": 4 * B * T * F,
    }


def estimate_training_memory(
    config: ModelConfig, batch: int, seq: int, dtype: str | None = None, remat: bool | str = False,
    fused_attention: bool | None = None,
) -> dict[str, int]:
    """Bytes for one training step of AdamW with float32 master parameters.

    Parameters, gradients and the two AdamW moments are float32 whatever the compute dtype.
    Activations are in the compute dtype, except the attention scores, softmax and logits, which
    model.py keeps in float32. With fused attention (a GPU's cuDNN kernel; by default where
    model.fused_attention_wanted says training uses it) no scores are kept, only one float32
    log-sum-exp per query row and head. The logits count three times (logits, their softmax, their
    gradient), for every position, or for one chunk of positions where training fuses the head
    with the loss (model.fused_head_chunk). With full rematerialisation (`remat` True or "full")
    only each block's input is kept, plus one block's full set while it is recomputed; with
    "dots", each block also keeps its projections' outputs (q, k, v, the attention output's
    projection, gate, up and down).
    """
    policy = {False: "off", True: "full"}.get(remat, remat)
    dtype = dtype or config.dtype
    n_params = closed_form_params(config)
    per_layer = activation_elements_per_layer(config, batch, seq)
    act_bytes = _bytes_per(dtype)
    if fused_attention is None:
        fused_attention = model.fused_attention_wanted()
    scores_bytes = (batch * config.n_heads * seq if fused_attention else per_layer["attention_scores"]) * 4
    other_bytes = (sum(per_layer.values()) - per_layer["attention_scores"]) * act_bytes
    one_layer = scores_bytes + other_bytes
    logits = 3 * batch * (model.fused_head_chunk(config, batch, seq) or seq) * config.vocab_size * 4
    if policy in ("full", "dots"):
        kept = batch * seq * config.d_model  # the block's input
        if policy == "dots":
            qkv = batch * seq * (config.n_heads + 2 * config.kv_heads) * config.head_dim
            kept += qkv + 2 * batch * seq * config.d_model + 2 * batch * seq * config.ffn_dim
        activations = config.n_layers * kept * act_bytes + one_layer + logits
    else:
        activations = config.n_layers * one_layer + logits
    parts = {
        "parameters": n_params * 4,
        "gradients": n_params * 4,
        "optimizer_state": 2 * n_params * 4,
        "activations": activations,
    }
    parts["total"] = sum(parts.values())
    return parts


def estimate_inference_memory(config: ModelConfig, batch: int, seq: int, dtype: str | None = None,
                              decoding_copies: bool = False) -> dict[str, int]:
    """Weights in the compute dtype plus a KV cache of 2·L·B·S·N·K values; with
    `decoding_copies` (decoding on a CPU), the float32 copies that model.decoding_params adds:
    each layer's q|k|v and w1|w3 joined, and a tied head transposed."""
    dtype = dtype or config.dtype
    size = _bytes_per(dtype)
    weights = closed_form_params(config) * size
    kv_cache = 2 * config.n_layers * batch * seq * config.kv_heads * config.head_dim * size
    parts = {"weights": weights, "kv_cache": kv_cache}
    if decoding_copies:
        D = config.d_model
        joined = D * (config.n_heads + 2 * config.kv_heads) * config.head_dim + 2 * D * config.ffn_dim
        head = config.vocab_size * D if config.tie_embeddings else 0
        parts["decoding_copies"] = (config.n_layers * joined + head) * 4
    return parts | {"total": sum(parts.values())}


def detected_device_memory() -> tuple[str, int | None]:
    """The first JAX device and its memory in bytes (host RAM for a CPU)."""
    import jax
    import psutil

    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu ({psutil.cpu_count()} cores, host RAM)", int(psutil.virtual_memory().total)
    stats = device.memory_stats() or {}
    return f"{device.platform}: {device.device_kind}", stats.get("bytes_limit")


# ---------------------------------------------------------------------------------------------
# Conformance, references, suggestions


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass" or "warn"
    detail: str


def conformance_checks(config: ModelConfig) -> list[Check]:
    """The LLaMA properties that matter; config validation has already refused the impossible."""
    checks = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(name, "pass" if ok else "warn", detail))

    check("head_dim = d_model / n_heads", config.head_dim * config.n_heads == config.d_model,
          f"{config.d_model} / {config.n_heads} = {config.head_dim}")
    check("kv heads divide heads", config.n_heads % config.kv_heads == 0,
          f"{config.kv_heads} kv heads, {config.n_heads // config.kv_heads} query heads each")
    ratio = config.ffn_dim / config.d_model
    check("SwiGLU hidden ≈ 8/3·d_model", 2.4 <= ratio <= 3.0,
          f"{config.ffn_dim} = {ratio:.2f}·d (LLaMA rounds 8/3·d = {8 * config.d_model / 3:.0f} up)")
    check("rotary position embedding", config.rope_theta > 0, f"RoPE, adjacent pairs, theta {config.rope_theta:g}")
    check("RMSNorm pre-normalisation", 0 < config.norm_eps <= 1e-4, f"eps {config.norm_eps:g}")
    check("no biases", True, "every projection is bias-free (model.py)")
    return checks


@dataclasses.dataclass(frozen=True)
class Reference:
    name: str
    published_params: int
    published_label: str
    shape: ModelConfig


def _reference(name, published, label, **shape) -> Reference:
    return Reference(name, published, label, ModelConfig(name=name, **shape))


# Shapes from llama2.c's model table and the TinyLlama / LLaMA-2 model cards.
REFERENCES = [
    _reference("llama2.c stories260K", 260_000, "260K", vocab_size=512, d_model=64, n_layers=5,
               n_heads=8, n_kv_heads=4, max_seq_len=512, multiple_of=4),
    _reference("llama2.c stories15M", 15_000_000, "15M", vocab_size=32000, d_model=288, n_layers=6,
               n_heads=6, max_seq_len=256),
    _reference("llama2.c stories42M", 42_000_000, "42M", vocab_size=32000, d_model=512, n_layers=8,
               n_heads=8, max_seq_len=1024),
    _reference("llama2.c stories110M", 110_000_000, "110M", vocab_size=32000, d_model=768,
               n_layers=12, n_heads=12, max_seq_len=1024),
    _reference("TinyLlama-1.1B", 1_100_048_384, "1,100,048,384", vocab_size=32000, d_model=2048,
               n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632, max_seq_len=2048,
               tie_embeddings=False),
    _reference("LLaMA-2-7B", 6_738_415_616, "6,738,415,616", vocab_size=32000, d_model=4096,
               n_layers=32, n_heads=32, hidden_dim=11008, max_seq_len=4096, tie_embeddings=False),
]


def nearest_reference(n_params: int) -> Reference:
    import math

    return min(REFERENCES, key=lambda r: abs(math.log(r.published_params / n_params)))


def suggestions(config: ModelConfig, train_bytes: int, device_name: str, device_bytes: int | None) -> list[str]:
    notes = []
    if config.vocab_size % 64:
        padded = 64 * -(-config.vocab_size // 64)
        notes.append(f"vocab_size {config.vocab_size} is not a multiple of 64; {padded} makes the "
                     "embedding and head matmuls tile evenly on GPUs and TPUs")
    if config.head_dim < 64 and config.d_model >= 512:
        notes.append(f"head_dim {config.head_dim} is below 64; fast GPU attention kernels want 64 or 128 "
                     f"(use n_heads = {max(1, config.d_model // 64)})")
    if config.hidden_dim is not None and config.hidden_dim % 64:
        notes.append(f"hidden_dim {config.hidden_dim} is not a multiple of 64; "
                     f"{llama_hidden_dim(config.d_model, 64)} keeps LLaMA's ratio and tiles evenly")
    if device_bytes and train_bytes > device_bytes:
        notes.append(f"training needs ~{train_bytes / GIB:.1f} GiB, more than the {device_bytes / GIB:.1f} GiB "
                     f"of {device_name}: lower the batch size, use --remat full, or --dtype bf16")
    elif device_bytes and train_bytes > 0.8 * device_bytes:
        notes.append(f"training needs ~{train_bytes / GIB:.1f} GiB, over 80% of {device_name}: "
                     "consider --remat full (or dots) or a smaller batch")
    return notes


# ---------------------------------------------------------------------------------------------
# The report


def analyse(config: ModelConfig, batch: int = 8, seq: int | None = None,
            device: tuple[str, int | None] | None = None) -> dict[str, Any]:
    """Everything `lumi architecture` reports for one config, as JSON-able data."""
    seq = seq or config.max_seq_len
    counted = count_params(config)
    formula = closed_form_params(config)
    if counted.total != formula:
        raise AssertionError(f"{config.name}: counted {counted.total} parameters, formula {formula}")
    device_name, device_bytes = device or detected_device_memory()
    training = {
        f"{dtype}{'_remat' if remat else ''}": estimate_training_memory(config, batch, seq, dtype, remat)
        for dtype in ("float32", "bfloat16") for remat in (False, True)
    }
    reference = nearest_reference(counted.total)
    return {
        "name": config.name,
        "config": config.to_dict(),
        "params": {**dataclasses.asdict(counted), "total": counted.total, "closed_form": formula},
        "published_params": config.published_params,
        "memory": {
            "batch_size": batch,
            "seq_len": seq,
            "training": training,
            "inference": estimate_inference_memory(config, 1, seq, config.dtype,
                                                   decoding_copies=device_name.startswith("cpu")),
            "device": {"name": device_name, "bytes": device_bytes},
        },
        "conformance": [dataclasses.asdict(c) for c in conformance_checks(config)],
        "nearest_reference": {"name": reference.name, "published_params": reference.published_params},
        "suggestions": suggestions(config, training[f"{config.dtype}"]["total"], device_name, device_bytes),
    }


def reference_table() -> list[dict[str, Any]]:
    return [
        {"name": r.name, "published": r.published_label, "published_params": r.published_params,
         "computed_params": closed_form_params(r.shape),
         "shape": f"d{r.shape.d_model} L{r.shape.n_layers} H{r.shape.n_heads}/{r.shape.kv_heads} "
                  f"F{r.shape.ffn_dim} V{r.shape.vocab_size}"}
        for r in REFERENCES
    ]


def collect_configs(paths: list[str]) -> tuple[list[tuple[str, ModelConfig]], list[str]]:
    """Model configs from files and directories; other JSON (recipes, prompts) is skipped with a note."""
    found, skipped = [], []
    for text in paths:
        path = Path(text)
        if not path.exists():
            bare = ARCHITECTURES_DIR / f"{text}.json"
            if bare.exists():
                path = bare
            else:
                raise UserError(f"{text}: no such file or directory; give a model config such as "
                                f"{ARCHITECTURES_DIR.relative_to(ARCHITECTURES_DIR.parent.parent)}/tiny.json")
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        for file in files:
            data = read_json(file)
            if not is_model_config(data):
                skipped.append(f"{file}: not a model config (no d_model/n_layers/vocab_size); skipped")
                continue
            found.append((str(file), model_config_from_dict(data, str(file))))
    if not found:
        raise UserError(f"no model config among {', '.join(paths)}; give a file like config/architectures/tiny.json")
    return found, skipped


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def print_report(reports: list[dict[str, Any]], skipped: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = Table(title="Parameters (exact, from the initialised shapes)")
    for column in ("model", "total", "embeddings", "attention", "mlp", "norms", "head", "formula", "published"):
        counts.add_column(column, justify="right" if column != "model" else "left")
    for r in reports:
        p = r["params"]
        counts.add_row(r["name"], f"{p['total']:,}", _human(p["embeddings"]), _human(p["attention"]),
                       _human(p["mlp"]), _human(p["norms"]), _human(p["head"]) if p["head"] else "tied",
                       "✓" if p["closed_form"] == p["total"] else f"✗ {p['closed_form']:,}",
                       f"{r['published_params']:,}" if r["published_params"] else "")
    print_table(console, counts)

    memory = Table(title=f"Memory (training: AdamW, batch × seq; device: {reports[0]['memory']['device']['name']}"
                         f", {_gib(reports[0]['memory']['device']['bytes'] or 0)})")
    for column in ("model", "batch×seq", "train fp32", "train fp32+remat", "train bf16", "train bf16+remat",
                   "inference (1×seq)"):
        memory.add_column(column, justify="right" if column != "model" else "left")
    for r in reports:
        m, t = r["memory"], r["memory"]["training"]
        memory.add_row(r["name"], f"{m['batch_size']}×{m['seq_len']}", _gib(t["float32"]["total"]),
                       _gib(t["float32_remat"]["total"]), _gib(t["bfloat16"]["total"]),
                       _gib(t["bfloat16_remat"]["total"]),
                       f"{_gib(m['inference']['total'])} (KV {_gib(m['inference']['kv_cache'])})")
    print_table(console, memory)

    checks = Table(title="LLaMA conformance")
    checks.add_column("model")
    checks.add_column("result")
    checks.add_column("details")
    for r in reports:
        warnings = [c for c in r["conformance"] if c["status"] != "pass"]
        verdict = "[green]all pass[/]" if not warnings else f"[yellow]{len(warnings)} warning(s)[/]"
        details = "; ".join(f"{c['name']}: {c['detail']}" for c in warnings) or f"{len(r['conformance'])} checks"
        checks.add_row(r["name"], verdict, details)
    print_table(console, checks)

    references = Table(title="Reference models (published count vs the count of their shape here)")
    for column in ("reference", "shape", "published", "computed here", "closest of yours"):
        references.add_column(column, justify="right" if column == "computed here" else "left")
    for ref in reference_table():
        closest = [r["name"] for r in reports if r["nearest_reference"]["name"] == ref["name"]]
        references.add_row(ref["name"], ref["shape"], ref["published"], f"{ref['computed_params']:,}",
                           ", ".join(closest))
    print_table(console, references)

    for r in reports:
        for note in r["suggestions"]:
            console.print(f"[yellow]suggestion[/] {r['name']}: {note}")
    for note in skipped:
        console.print(f"[dim]note: {note}[/]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG",
                        help="model config files or directories (or names such as tiny)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size for the memory estimate (default 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the model's context)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:
        raise UserError(f"--batch-size {args.batch_size}: use a positive integer")
    if args.seq_len is not None and args.seq_len <= 0:
        raise UserError(f"--seq-len {args.seq_len}: use a positive integer")
    configs, skipped = collect_configs(args.configs)
    device = detected_device_memory()
    reports = [analyse(config, args.batch_size, args.seq_len, device) for _, config in configs]
    if args.json:
        print(json.dumps({"models": reports, "references": reference_table(), "skipped": skipped}, indent=2))
    else:
        print_report(reports, skipped)
    return 0
