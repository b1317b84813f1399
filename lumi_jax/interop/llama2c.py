"""llama2.c export: the version-0 ("legacy") model file that llama2.c's `run.c` reads, and tokenizer.bin.

The model file (all little-endian, no padding):

    header   7 × int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len
             vocab_size is written negative when the output head is not tied to the embedding
    then float32 tensors, each kind for all layers before the next kind:
        token_embedding      (vocab_size, dim)
        rms_att_weight       (n_layers, dim)              every layer's attention norm
        wq                   (n_layers, n_heads·K, dim)   K = dim / n_heads
        wk                   (n_layers, n_kv_heads·K, dim)
        wv                   (n_layers, n_kv_heads·K, dim)
        wo                   (n_layers, dim, n_heads·K)
        rms_ffn_weight       (n_layers, dim)              every layer's MLP norm
        w1                   (n_layers, hidden_dim, dim)  the SwiGLU gate
        w2                   (n_layers, dim, hidden_dim)  the down projection
        w3                   (n_layers, hidden_dim, dim)  the up projection
        rms_final_weight     (dim,)
        freq_cis_real        (max_seq_len, K/2)           cos(t · theta^(-2i/K)); run.c skips it
        freq_cis_imag        (max_seq_len, K/2)           sin(...); run.c skips it
        wcls                 (vocab_size, dim)            only when untied
    Every matrix is PyTorch's (out, in), row-major: lumi's (in, out) kernels transposed. RoPE
    stays in lumi's adjacent-pairs layout, which is llama2.c's own, so wq and wk are not permuted.
    run.c computes RoPE itself with theta 10000 (the tables are only skipped), so a model with
    another rope_theta is refused.

tokenizer.bin (what llama2.c's tokenizer.py writes, read by run.c's build_tokenizer):

    int32 max_token_length                        the longest piece, in bytes
    then for each id 0 .. vocab_size-1:
        float32 score                             SentencePiece's score (BPE merge priority)
        int32 length, then `length` bytes         the piece as UTF-8
    A piece's `▁` becomes a space; BOS becomes "\\n<s>\\n" and EOS "\\n</s>\\n"; byte-fallback pieces
    stay as their "<0xNN>" text, which run.c's decode turns back into the byte.

Note: run.c's encoder prepends a space (SentencePiece's dummy prefix) before encoding a prompt;
lumi's tokenizer adds none, so a prompt encoded by run.c can differ from lumi's at its first word.
Decoding and the model's computation are the same.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm

from lumi_jax.config import ModelConfig
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from lumi_jax.errors import UserError
from lumi_jax.files import temporary_sibling, write_bytes_atomic
from lumi_jax.model import rope_angles
from lumi_jax.runs import load_run

HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
RUN_C_ROPE_THETA = 10000.0  # run.c hard-codes it


def header(config: ModelConfig) -> tuple[int, ...]:
    vocab = config.vocab_size if config.tie_embeddings else -config.vocab_size
    return (config.d_model, config.ffn_dim, config.n_layers, config.n_heads, config.kv_heads, vocab,
            config.max_seq_len)


def rope_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of lumi's RoPE angles, (max_seq_len, head_dim/2) each."""
    positions = jnp.arange(config.max_seq_len)[None, :]
    angles = np.asarray(rope_angles(positions, config.head_dim, config.rope_theta))[0]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def model_tensors(config: ModelConfig, params: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) in file order; layered kinds are yielded one layer at a time."""

    def leaf(*path: str) -> np.ndarray:
        tree = params
        for key in path:
            tree = tree[key]
        return np.asarray(jax.device_get(tree), np.float32)

    layers = [f"layers_{i}" for i in range(config.n_layers)]
    yield "token_embedding", leaf("embed", "embedding")
    yield from ((f"rms_att_weight.{i}", leaf(layer, "attention_norm", "scale")) for i, layer in enumerate(layers))
    for name in ("wq", "wk", "wv", "wo"):
        yield from ((f"{name}.{i}", leaf(layer, "attention", name, "kernel").T) for i, layer in enumerate(layers))
    yield from ((f"rms_ffn_weight.{i}", leaf(layer, "mlp_norm", "scale")) for i, layer in enumerate(layers))
    for name in ("w1", "w2", "w3"):
        yield from ((f"{name}.{i}", leaf(layer, "mlp", name, "kernel").T) for i, layer in enumerate(layers))
    yield "rms_final_weight", leaf("final_norm", "scale")
    cos, sin = rope_tables(config)
    yield "freq_cis_real", cos
    yield "freq_cis_imag", sin
    if not config.tie_embeddings:
        yield "wcls", leaf("output", "kernel").T


def write_model_bin(path: Path, config: ModelConfig, params: Any) -> None:
    """Stream the model file to a temporary sibling, then rename it into place."""
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "wb") as file:
            file.write(struct.pack("<7i", *header(config)))
            for _name, array in model_tensors(config, params):
                file.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def tokenizer_bin(tokenizer_model: Path) -> bytes:
    """tokenizer.bin's bytes for a SentencePiece model (see the module docstring)."""
    processor = spm.SentencePieceProcessor()
    processor.load_from_serialized_proto(Path(tokenizer_model).read_bytes())
    pieces, scores = [], []
    for token_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(token_id)
        if token_id == BOS_ID:
            piece = "\n<s>\n"
        elif token_id == EOS_ID:
            piece = "\n</s>\n"
        pieces.append(piece.replace("▁", " ").encode("utf-8"))
        scores.append(processor.get_score(token_id))
    chunks = [struct.pack("<i", max(len(piece) for piece in pieces))]
    for piece, score in zip(pieces, scores, strict=True):
        chunks.append(struct.pack("<fi", score, len(piece)))
        chunks.append(piece)
    return b"".join(chunks)


def export_llama2c(run_dir: str | Path, out_path: str | Path, *, step: int | None = None) -> tuple[Path, Path]:
    """Write OUT (the model) and tokenizer.bin beside it; returns both paths.

    Nothing is overwritten: OUT must not exist, and an existing tokenizer.bin beside it is kept
    only when it is byte-identical to the one this run needs (several models of one tokenizer).
    """
    out = Path(out_path)
    if out.exists():
        raise UserError(f"{out}: exists; choose a new --out file (nothing is overwritten)")
    loaded = load_run(run_dir, step=step)
    config = loaded.model_config
    if config.rope_theta != RUN_C_ROPE_THETA:
        raise UserError(f"model '{config.name}' uses rope_theta {config.rope_theta:g}, but llama2.c's run.c "
                        f"hard-codes {RUN_C_ROPE_THETA:g}; export it with --format hf instead")
    tokenizer: Tokenizer = loaded.tokenizer
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"{loaded.path}: the tokenizer has {tokenizer.vocab_size} pieces but model '{config.name}' "
                        f"has vocab_size {config.vocab_size}; run.c needs one piece per id")
    tokenizer_path = out.parent / "tokenizer.bin"
    tokenizer_bytes = tokenizer_bin(tokenizer.path)
    if tokenizer_path.exists() and tokenizer_path.read_bytes() != tokenizer_bytes:
        raise UserError(f"{tokenizer_path}: exists and holds another tokenizer; export into another directory "
                        "(nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_model_bin(out, config, loaded.params)
    if not tokenizer_path.exists():
        write_bytes_atomic(tokenizer_path, tokenizer_bytes)
    return out, tokenizer_path
