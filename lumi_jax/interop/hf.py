"""Hugging Face interop: a lumi run <-> a `LlamaForCausalLM` directory (config.json + safetensors).

Export (`lumi export --format hf --out DIR`) writes what `transformers` needs to load the model
and its tokenizer with no lumi code:

    DIR/config.json               LlamaForCausalLM: sizes, rope_theta, rms_norm_eps, heads, tying, ids
    DIR/generation_config.json    bos/eos ids
    DIR/model.safetensors         float32 (or bfloat16 with --dtype), written with `safetensors`
    DIR/tokenizer.model           the run's SentencePiece model, unchanged
    DIR/tokenizer_config.json     LlamaTokenizer settings that reproduce lumi's encoding exactly
    DIR/special_tokens_map.json   <unk> <s> </s>
    DIR/README.md                 where the model came from, its evaluation figures if the run has them

Import (`lumi import --from DIR --out runs/NAME`) reads a local LLaMA checkpoint (config.json and
model.safetensors, or shards listed in model.safetensors.index.json) tensor by tensor and writes a
lumi run: config.json, tokenizer.model (when DIR has a SentencePiece one, or --tokenizer gives
one) and one checkpoint at step 0. Everything is checked before anything is written: another
architecture, a missing shard, a missing or unexpected tensor, rope scaling and biases are each
refused with one line.

The parameter mapping (lumi kernels are (in, out); PyTorch weights are (out, in)):

    embed/embedding                         model.embed_tokens.weight             as is
    layers_i/attention_norm/scale           model.layers.i.input_layernorm.weight as is
    layers_i/attention/wq/kernel            model.layers.i.self_attn.q_proj.weight  RoPE-permuted, transposed
    layers_i/attention/wk/kernel            model.layers.i.self_attn.k_proj.weight  RoPE-permuted, transposed
    layers_i/attention/wv/kernel, wo        ...v_proj.weight, ...o_proj.weight    transposed
    layers_i/mlp_norm/scale                 model.layers.i.post_attention_layernorm.weight
    layers_i/mlp/w1, w3, w2 /kernel         ...mlp.gate_proj, up_proj, down_proj  transposed
    final_norm/scale                        model.norm.weight
    output/kernel (untied only)             lm_head.weight                        transposed

RoPE: lumi rotates adjacent pairs (2j, 2j+1) of each head; Hugging Face rotates halves (j, j+K/2).
So each head's output rows of wq and wk are reordered: index 2j+p moves to p·K/2 + j (see the
top of lumi_jax/model.py). The permutation is exact (a reordering), so export -> import gives
back every tensor bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_dtypes
import numpy as np
import safetensors
from safetensors import safe_open
from safetensors.numpy import save_file

from lumi_jax.checkpoint import CheckpointStore
from lumi_jax.config import ModelConfig, TrainConfig, model_config_from_dict, read_json
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, UNK_ID, Tokenizer
from lumi_jax.errors import UserError
from lumi_jax.files import write_json_atomic, write_text_atomic
from lumi_jax.model import count_params, param_shapes
from lumi_jax.run_lock import LOCK_NAME
from lumi_jax.runs import LoadedRun, load_run, versions

HF_ARCHITECTURE = "LlamaForCausalLM"
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
READABLE_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
INDEX_FILE = "model.safetensors.index.json"
# An imported run has no optimizer state (fine-tuning and training start a fresh one); Orbax
# refuses an empty item, so the checkpoint's opt_state is this one scalar.
IMPORTED_OPT_STATE = {"none": np.zeros((), np.int32)}


# ---------------------------------------------------------------------------------------------
# The mapping.


class Tensor(NamedTuple):
    """One Hugging Face tensor and the lumi parameter it is."""

    hf_name: str
    path: tuple[str, ...]  # keys into lumi's nested parameter dict
    kind: str  # "copy" (same layout), "linear" (transposed), "rope" (RoPE-permuted, transposed)
    heads: int = 0  # for "rope": the heads the output rows are grouped in


def parameter_map(config: ModelConfig) -> list[Tensor]:
    """Every tensor of the model, in Hugging Face's order."""
    tensors = [Tensor("model.embed_tokens.weight", ("embed", "embedding"), "copy")]
    for i in range(config.n_layers):
        lumi, hf = f"layers_{i}", f"model.layers.{i}"
        tensors += [
            Tensor(f"{hf}.input_layernorm.weight", (lumi, "attention_norm", "scale"), "copy"),
            Tensor(f"{hf}.self_attn.q_proj.weight", (lumi, "attention", "wq", "kernel"), "rope", config.n_heads),
            Tensor(f"{hf}.self_attn.k_proj.weight", (lumi, "attention", "wk", "kernel"), "rope", config.kv_heads),
            Tensor(f"{hf}.self_attn.v_proj.weight", (lumi, "attention", "wv", "kernel"), "linear"),
            Tensor(f"{hf}.self_attn.o_proj.weight", (lumi, "attention", "wo", "kernel"), "linear"),
            Tensor(f"{hf}.post_attention_layernorm.weight", (lumi, "mlp_norm", "scale"), "copy"),
            Tensor(f"{hf}.mlp.gate_proj.weight", (lumi, "mlp", "w1", "kernel"), "linear"),
            Tensor(f"{hf}.mlp.up_proj.weight", (lumi, "mlp", "w3", "kernel"), "linear"),
            Tensor(f"{hf}.mlp.down_proj.weight", (lumi, "mlp", "w2", "kernel"), "linear"),
        ]
    tensors.append(Tensor("model.norm.weight", ("final_norm", "scale"), "copy"))
    if not config.tie_embeddings:
        tensors.append(Tensor("lm_head.weight", ("output", "kernel"), "linear"))
    return tensors


def rope_to_hf(kernel_DX: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's output columns from adjacent pairs to halves: 2j+p -> p·K/2 + j."""
    D, X = kernel_DX.shape
    return kernel_DX.reshape(D, heads, X // heads // 2, 2).transpose(0, 1, 3, 2).reshape(D, X)


def rope_from_hf(kernel_DX: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `rope_to_hf`: halves back to adjacent pairs."""
    D, X = kernel_DX.shape
    return kernel_DX.reshape(D, heads, 2, X // heads // 2).transpose(0, 1, 3, 2).reshape(D, X)


def to_hf(tensor: Tensor, value: np.ndarray) -> np.ndarray:
    if tensor.kind == "rope":
        return rope_to_hf(value, tensor.heads).T
    return value.T if tensor.kind == "linear" else value


def from_hf(tensor: Tensor, value: np.ndarray) -> np.ndarray:
    if tensor.kind == "rope":
        return rope_from_hf(value.T, tensor.heads)
    return value.T if tensor.kind == "linear" else value


def get_path(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape each Hugging Face tensor must have for this config."""
    shapes = param_shapes(config)
    result = {}
    for tensor in parameter_map(config):
        shape = tuple(get_path(shapes, tensor.path).shape)
        result[tensor.hf_name] = shape if tensor.kind == "copy" else shape[::-1]
    return result


def hf_config(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json for transformers' LlamaForCausalLM."""
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
    }


# ---------------------------------------------------------------------------------------------
# Export.


def check_new_output(path: Path, what: str) -> None:
    """Never overwrite: the output must not exist, or be an empty directory."""
    if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):  # its own lock is not content
        raise UserError(f"{path}: exists and is not empty; choose a new {what} (nothing is overwritten)")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file; choose a new {what} (nothing is overwritten)")


def fresh_temporary_dir(final: Path) -> Path:
    """A hidden sibling to build `final` in, so a crash never leaves a half-written directory."""
    temporary = final.parent / f".{final.name}.tmp"
    if temporary.exists():
        shutil.rmtree(temporary)  # the leftover of a killed export or import
    temporary.mkdir(parents=True)
    return temporary


def move_into_place(temporary: Path, final: Path) -> None:
    if final.is_dir():
        (final / LOCK_NAME).unlink(missing_ok=True)  # the importer's own lock: the run replaces the directory
        final.rmdir()  # empty: checked before anything was written
    os.replace(temporary, final)


def check_tokenizer_fits(tokenizer: Tokenizer, config: ModelConfig, where: str) -> None:
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but model '{config.name}' "
                        f"has vocab_size {config.vocab_size}; use the tokenizer the model was trained with")


def export_hf(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32",
              step: int | None = None) -> Path:
    """Write the run's latest (or `step`'s) parameters and tokenizer as a transformers directory."""
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"dtype '{dtype}' is not one of {', '.join(EXPORT_DTYPES)}")
    out = Path(out_dir)
    check_new_output(out, "--out directory")
    loaded = load_run(run_dir, step=step)
    config = loaded.model_config
    check_tokenizer_fits(loaded.tokenizer, config, str(loaded.path))
    temporary = fresh_temporary_dir(out)
    try:
        tensors = {}
        for tensor in parameter_map(config):
            value = np.asarray(jax.device_get(get_path(loaded.params, tensor.path)), np.float32)
            tensors[tensor.hf_name] = np.ascontiguousarray(to_hf(tensor, value).astype(EXPORT_DTYPES[dtype]))
        save_file(tensors, temporary / "model.safetensors", metadata={"format": "pt"})  # "pt": what transformers expects
        del tensors
        write_json_atomic(temporary / "config.json", hf_config(config, dtype))
        shutil.copymode(temporary / "config.json", temporary / "model.safetensors")  # safetensors writes 0600
        write_json_atomic(temporary / "generation_config.json",
                          {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID})
        write_tokenizer_files(temporary, loaded.tokenizer, config)
        write_text_atomic(temporary / "README.md", readme(loaded, dtype))
        move_into_place(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out


def write_tokenizer_files(directory: Path, tokenizer: Tokenizer, config: ModelConfig) -> None:
    """The files LlamaTokenizer (and its fast twin) need to encode exactly as lumi does.

    lumi's SentencePiece model adds no dummy prefix, so the tokenizer is `legacy` (SentencePiece
    encodes the text as is) with `add_prefix_space` off; a BOS is prepended, no EOS appended.
    """
    shutil.copyfile(tokenizer.path, directory / "tokenizer.model")
    special = {"unk_token": tokenizer.id_to_piece(UNK_ID), "bos_token": tokenizer.id_to_piece(BOS_ID),
               "eos_token": tokenizer.id_to_piece(EOS_ID)}
    write_json_atomic(directory / "special_tokens_map.json", special)
    write_json_atomic(directory / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "sp_model_kwargs": {},
        "model_max_length": config.max_seq_len,
    })


def evaluation_lines(run_dir: Path) -> list[str]:
    """The run's eval.json figures as Markdown lines, or nothing when it has none."""
    path = run_dir / "eval.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        validation = report["validation"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(validation, dict):
        return []
    lines = [f"Evaluated at step {report.get('step')} on `{report.get('data')}` (lumi evaluate):", ""]
    for key, label in (("loss", "validation loss (nats/token)"), ("perplexity", "perplexity"),
                       ("bits_per_byte", "bits per byte")):
        if isinstance(validation.get(key), (int, float)):
            lines.append(f"- {label}: {validation[key]:.4f}")
    match = report.get("exact_match")
    if isinstance(match, dict):
        figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in match.items()
                            if isinstance(v, (int, float)))
        if figures:
            lines.append(f"- exact match on held-out instructions: {figures}")
    return lines if len(lines) > 2 else []


def readme(loaded: LoadedRun, dtype: str) -> str:
    config = loaded.model_config
    data = loaded.config.get("data") or {}
    origin = f"trained on `{data['path']}`" if data.get("path") else "with no recorded dataset"
    if loaded.config.get("imported_from"):
        origin = f"imported from `{loaded.config['imported_from'].get('path')}`"
    elif loaded.config.get("init_from"):
        origin += f", fine-tuned from `{loaded.config['init_from']}`"
    heads = f"{config.n_heads} heads" + (f" / {config.kv_heads} key-value heads" if config.kv_heads != config.n_heads else "")
    evaluation = evaluation_lines(loaded.path) or ["The run has no evaluation (`lumi evaluate --run RUN` writes one)."]
    return "\n".join([
        f"# {config.name}",
        "",
        f"A LLaMA-style language model exported by lumi_jax from the run `{loaded.path}` at step "
        f"{loaded.step} ({origin}).",
        "",
        "## Model",
        "",
        f"- {count_params(loaded.params):,} parameters (embedding and head counted once when tied), stored as {dtype}",
        f"- {config.n_layers} layers, width {config.d_model}, {heads}, SwiGLU width {config.ffn_dim}",
        f"- vocabulary {config.vocab_size} (SentencePiece BPE with byte fallback), context {config.max_seq_len} tokens",
        f"- RoPE theta {config.rope_theta:g}, RMSNorm eps {config.norm_eps:g}, "
        f"output head {'tied to the embedding' if config.tie_embeddings else 'separate'}",
        "",
        "## Evaluation",
        "",
        *evaluation,
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")',
        'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY")',
        'inputs = tokenizer("Once upon a time", return_tensors="pt")  # BOS is added',
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```",
        "",
        "The tokenizer adds no dummy prefix space (lumi's SentencePiece settings), so text is encoded "
        "exactly as lumi encodes it.",
        "",
    ])


# ---------------------------------------------------------------------------------------------
# Import.


def _config_field(hf: dict, name: str, kind: type, where: str, default: Any = ...) -> Any:
    if name not in hf or hf[name] is None:
        if default is ...:
            raise UserError(f"{where}: lacks '{name}'; it is not a complete LLaMA config.json")
        return default
    value = hf[name]
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
    if not ok or isinstance(value, bool) != (kind is bool):
        raise UserError(f"{where}: '{name}' is {json.dumps(value)}, not {kind.__name__}; the config.json is damaged")
    return kind(value)


def model_config_from_hf(hf: Any, source: Path) -> ModelConfig:
    """A lumi ModelConfig from a transformers config.json, refusing what lumi's model cannot run."""
    where = str(source / "config.json")
    if not isinstance(hf, dict):
        raise UserError(f"{where}: is not a JSON object; give a Hugging Face model directory")
    architectures = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if architectures != [HF_ARCHITECTURE] and not (not architectures and model_type == "llama"):
        named = ", ".join(map(str, architectures)) or str(model_type)
        raise UserError(f"{where}: the architecture is {named}, not {HF_ARCHITECTURE}; "
                        "lumi import reads only LLaMA checkpoints")
    if model_type not in (None, "llama"):
        raise UserError(f"{where}: model_type is '{model_type}', not 'llama'; lumi import reads only LLaMA checkpoints")
    scaling = hf.get("rope_scaling")
    if scaling and not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"
                        and not scaling.get("factor")):
        raise UserError(f"{where}: uses rope_scaling ({json.dumps(hf['rope_scaling'])}), which lumi's RoPE does "
                        "not implement; import a checkpoint without rope scaling")
    for bias in ("attention_bias", "mlp_bias"):
        if hf.get(bias):
            raise UserError(f"{where}: has {bias}=true; lumi's LLaMA has no biases, so it cannot hold this model")
    if hf.get("quantization_config"):
        raise UserError(f"{where}: is a quantized checkpoint; import the full-precision (float16/bfloat16/float32) one")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise UserError(f"{where}: hidden_act is '{hf.get('hidden_act')}'; lumi's SwiGLU uses silu")
    for name, expected in (("bos_token_id", BOS_ID), ("eos_token_id", EOS_ID)):
        if hf.get(name) not in (None, expected, [expected]):
            raise UserError(f"{where}: {name} is {json.dumps(hf.get(name))}; lumi_jax's tokenizer convention is "
                            f"unk=0 bos=1 eos=2, so generation would start and stop on the wrong ids")
    d_model = _config_field(hf, "hidden_size", int, where)
    n_heads = _config_field(hf, "num_attention_heads", int, where)
    n_kv_heads = _config_field(hf, "num_key_value_heads", int, where, n_heads)
    head_dim = _config_field(hf, "head_dim", int, where, d_model // max(n_heads, 1))
    if head_dim * n_heads != d_model:
        raise UserError(f"{where}: head_dim {head_dim} × {n_heads} heads is not hidden_size {d_model}; "
                        "lumi's attention needs head_dim = hidden_size / num_attention_heads")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.resolve().name) or "imported"
    data = {
        "name": name,
        "vocab_size": _config_field(hf, "vocab_size", int, where),
        "d_model": d_model,
        "n_layers": _config_field(hf, "num_hidden_layers", int, where),
        "n_heads": n_heads,
        "n_kv_heads": None if n_kv_heads == n_heads else n_kv_heads,
        "hidden_dim": _config_field(hf, "intermediate_size", int, where),
        "max_seq_len": _config_field(hf, "max_position_embeddings", int, where, 2048),
        "rope_theta": _config_field(hf, "rope_theta", float, where, 10000.0),
        "norm_eps": _config_field(hf, "rms_norm_eps", float, where, 1e-6),
        "tie_embeddings": _config_field(hf, "tie_word_embeddings", bool, where, False),
        "dtype": "float32",
        "description": f"imported from {source.resolve()}",
    }
    return model_config_from_dict(data, where)


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in one safetensors file, without reading the data."""
    try:
        with safe_open(str(path), framework="numpy") as reader:
            return {name: (tuple(reader.get_slice(name).get_shape()), str(reader.get_slice(name).get_dtype()))
                    for name in reader.keys()}
    except Exception as error:  # safetensors' SafetensorError, OSError: a truncated or foreign file
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not a readable safetensors file ({message}); download it again") from None


def weight_files(source: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the index, or the single file)."""
    index = source / INDEX_FILE
    if index.is_file():
        content = read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: has no weight_map; the index is damaged, download it again")
        shards = sorted(set(map(str, weight_map.values())))
        missing = [shard for shard in shards if not (source / shard).is_file()]
        if missing:
            raise UserError(f"{source}: shard {missing[0]} listed in {INDEX_FILE} is missing ({len(missing)} of "
                            f"{len(shards)} shards absent); download every shard")
        return {str(name): source / shard for name, shard in weight_map.items()}
    files = sorted(source.glob("*.safetensors"))
    if len(files) == 1:
        return dict.fromkeys(read_header(files[0]), files[0])
    if files:
        raise UserError(f"{source}: has {len(files)} .safetensors files but no {INDEX_FILE}; "
                        "the set of shards cannot be checked: download the index too")
    if list(source.glob("*.bin")) or list(source.glob("*.pt")) or list(source.glob("*.pth")):
        raise UserError(f"{source}: has only PyTorch pickle weights; lumi reads safetensors: re-save the model with "
                        "transformers' save_pretrained(DIR, safe_serialization=True)")
    raise UserError(f"{source}: has no .safetensors weights; give a Hugging Face model directory")


def checked_tensor_files(source: Path, config: ModelConfig) -> dict[str, Path]:
    """Every tensor the model needs, where it is; refuses missing, unexpected or misshapen ones."""
    located = weight_files(source)
    expected = hf_shapes(config)
    headers: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in sorted(set(located.values())):
        headers.update(read_header(path))
    listed_elsewhere = [name for name, path in located.items() if name not in headers]
    if listed_elsewhere:
        raise UserError(f"{source}: tensor {listed_elsewhere[0]} is listed in {INDEX_FILE} but not in "
                        f"{located[listed_elsewhere[0]].name}; the shards are partial, download them again")
    ignored = {"lm_head.weight"} if config.tie_embeddings else set()
    unexpected = [name for name in headers if name not in expected and name not in ignored
                  and not name.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise UserError(f"{source}: has tensor {unexpected[0]} ({len(unexpected)} unexpected in all), which a "
                        "plain LLaMA does not have (a bias, or another architecture); lumi cannot hold it")
    missing = [name for name in expected if name not in headers or name not in located]
    if missing:
        raise UserError(f"{source}: lacks tensor {missing[0]} ({len(missing)} of {len(expected)} missing); "
                        "the checkpoint is partial: download every shard")
    for name, shape in expected.items():
        found_shape, found_dtype = headers[name]
        if found_shape != shape:
            raise UserError(f"{source}: tensor {name} has shape {list(found_shape)}, but config.json implies "
                            f"{list(shape)}; the weights and config.json do not belong together")
        if found_dtype not in READABLE_DTYPES:
            raise UserError(f"{source}: tensor {name} is {found_dtype}; lumi imports float32, float16 and "
                            "bfloat16 weights (not quantized ones)")
    return {name: located[name] for name in expected}


def load_hf_params(files: dict[str, Path], config: ModelConfig,
                   log: Callable[[str], None] | None = None) -> dict:
    """lumi's float32 parameter dict, one tensor at a time (memory stays near the model's size)."""
    by_name = {tensor.hf_name: tensor for tensor in parameter_map(config)}
    params: dict = {}
    for path in sorted(set(files.values())):
        names = [name for name, where in files.items() if where == path]
        with safe_open(str(path), framework="numpy") as reader:
            for name in names:
                value = from_hf(by_name[name], reader.get_tensor(name).astype(np.float32, copy=False))
                set_path(params, by_name[name].path, np.ascontiguousarray(value))
        if log:
            log(f"read {len(names)} tensors from {path.name}")
    return params


def write_run(run_dir: str | Path, config: ModelConfig, params: dict, *, tokenizer_path: str | Path | None,
              init_from: str, imported_from: dict[str, Any] | None = None) -> Path:
    """A lumi run made from given parameters: config.json, tokenizer.model, one checkpoint (step 0).

    What `lumi_jax.runs.load_run` reads: config.json's model and train sections, tokenizer.model
    with its sha256 in config.json and in the checkpoint's meta, and a checkpoint whose params
    match `param_shapes(config)`. The run is built in a hidden sibling directory and renamed
    into place, so a failure leaves nothing behind.
    """
    run_dir = Path(run_dir)
    check_new_output(run_dir, "--out run directory")
    expected = jax.tree.map(lambda leaf: tuple(leaf.shape), param_shapes(config))
    given = jax.tree.map(lambda leaf: tuple(np.shape(leaf)), params)
    if expected != given:
        raise ValueError(f"parameters do not fit model '{config.name}'")
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)
    tokenizer_sha256 = None
    train_config = TrainConfig()
    temporary = fresh_temporary_dir(run_dir)
    try:
        if tokenizer_path is not None:
            tokenizer_bytes = Path(tokenizer_path).read_bytes()
            tokenizer_sha256 = hashlib.sha256(tokenizer_bytes).hexdigest()
            (temporary / "tokenizer.model").write_bytes(tokenizer_bytes)
        run_config = {
            "model": config.to_dict(),
            "train": train_config.to_dict(),
            "data": {"path": None, "tokenizer_sha256": tokenizer_sha256, "meta": None},
            "versions": {**versions(), "safetensors": safetensors.__version__},
            "init_from": init_from,
            "imported_from": imported_from,
        }
        write_json_atomic(temporary / "config.json", run_config)
        meta = {"step": 0, "rng": None, "loader": None, "config_hash": None, "tokenizer_sha256": tokenizer_sha256,
                "config": {"model": run_config["model"], "train": run_config["train"]}, "init_from": init_from}
        store = CheckpointStore(temporary / "checkpoints", keep=1)
        store.save(0, params, IMPORTED_OPT_STATE, meta)
        store.close()
        move_into_place(temporary, run_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return run_dir


def import_hf(source_dir: str | Path, out_dir: str | Path, *, tokenizer: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> Path:
    """Turn a local Hugging Face LLaMA directory into the lumi run `out_dir`; returns its path."""
    source = Path(source_dir)
    if not source.is_dir():
        raise UserError(f"{source}: no such directory; give a local Hugging Face model directory "
                        "(config.json and *.safetensors)")
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: has no config.json; give a Hugging Face model directory")
    out = Path(out_dir)
    check_new_output(out, "--out run directory")
    hf = read_json(source / "config.json")
    config = model_config_from_hf(hf, source)
    files = checked_tensor_files(source, config)
    tokenizer_path = Path(tokenizer) if tokenizer is not None else source / "tokenizer.model"
    if tokenizer is not None or tokenizer_path.is_file():
        check_tokenizer_fits(Tokenizer.load(tokenizer_path), config, str(tokenizer_path))
    else:
        tokenizer_path = None
    params = load_hf_params(files, config, log)
    imported_from = {
        "path": str(source.resolve()),
        "format": "hf",
        "architecture": HF_ARCHITECTURE,
        "torch_dtype": hf.get("torch_dtype") or hf.get("dtype"),
        "transformers_version": hf.get("transformers_version"),
        "files": sorted({path.name for path in files.values()}),
        "tensors": len(files),
        "tokenizer": None if tokenizer_path is None else str(Path(tokenizer_path).resolve()),
    }
    write_run(out, config, params, tokenizer_path=tokenizer_path, init_from=f"hf:{source.resolve()}",
              imported_from=imported_from)
    return out
