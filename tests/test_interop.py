"""Interop: Hugging Face export and import, llama2.c export.

The runs here are built directly (random parameters, a tokenizer trained on a little sample
text, written with the importer's own run writer), so no test trains anything. The parity
tests need the `interop` extra (torch, transformers) and skip without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
import sentencepiece as spm
from safetensors import safe_open
from safetensors.numpy import save_file

from lumi_jax import cli
from lumi_jax.data.sample_corpus import generate_stories
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, train_tokenizer
from lumi_jax.errors import UserError, exit_on_user_error
from lumi_jax.interop import export_command, import_command
from lumi_jax.interop.hf import hf_shapes, parameter_map, rope_from_hf, rope_to_hf, write_run
from lumi_jax.interop.llama2c import HEADER_FIELDS, rope_tables
from lumi_jax.model import forward, param_shapes
from lumi_jax.runs import load_run

# ---------------------------------------------------------------------------------------------
# Helpers and fixtures.


def lumi(module, *argv) -> int:
    """`lumi export ...` / `lumi import ...`: through cli.main once the commands are in its table."""
    name = "export" if module is export_command else "import"
    if cli.COMMANDS.get(name, ("",))[0] == module.__name__:
        return cli.main([name, *map(str, argv)])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    with exit_on_user_error():
        return module.run(args)


def random_params(config, seed: int) -> dict:
    """Random float32 parameters, large enough that the logits are peaked (greedy decoding is
    then far from ties) and with norm scales away from 1 (so a swapped norm shows)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "scale":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (rng.standard_normal(leaf.shape) * 0.15).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


def leaves_with_paths(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def assert_trees_equal(expected, actual) -> None:
    expected, actual = leaves_with_paths(expected), leaves_with_paths(actual)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert actual[name].dtype == np.float32, name
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return generate_stories(0.05, 0)


@pytest.fixture(scope="module")
def tokenizer_path(workspace, texts) -> Path:
    path = workspace / "tokenizer.model"
    train_tokenizer(texts, 512, path)
    return path


@pytest.fixture(scope="module")
def runs(workspace, tokenizer_path, micro_config) -> dict:
    """Two micro runs: `tied` (the config as is: GQA, tied head) and `untied` (separate head, MHA)."""
    configs = {
        "tied": micro_config,
        "untied": dataclasses.replace(micro_config, name="micro-untied", tie_embeddings=False, n_kv_heads=None),
    }
    made = {}
    for seed, (name, config) in enumerate(configs.items()):
        params = random_params(config, seed)
        run_dir = write_run(workspace / "runs" / name, config, params, tokenizer_path=tokenizer_path,
                            init_from="test")
        made[name] = (config, params, run_dir)
    return made


@pytest.fixture(scope="module")
def hf_exports(runs, workspace) -> dict[str, Path]:
    exports = {}
    for name, (_config, _params, run_dir) in runs.items():
        exports[name] = workspace / "hf" / name
        assert lumi(export_command, "--run", run_dir, "--format", "hf", "--out", exports[name]) == 0
    return exports


def assert_refused(capsys, module, *argv, says: str) -> str:
    with pytest.raises(SystemExit) as stop:
        lumi(module, *argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert says in err, err
    return err


# ---------------------------------------------------------------------------------------------
# The mapping itself.


def test_rope_permutation_is_the_documented_reordering_and_inverts():
    heads, K, D = 3, 8, 5
    kernel = np.arange(D * heads * K, dtype=np.float32).reshape(D, heads * K)
    moved = rope_to_hf(kernel, heads)
    for h in range(heads):
        for j in range(K // 2):
            for p in (0, 1):  # adjacent-pairs index 2j+p lands at p·K/2 + j
                np.testing.assert_array_equal(moved[:, h * K + p * K // 2 + j], kernel[:, h * K + 2 * j + p])
    np.testing.assert_array_equal(rope_from_hf(moved, heads), kernel)


def test_parameter_map_covers_every_parameter_once(micro_config):
    for config in (micro_config, dataclasses.replace(micro_config, tie_embeddings=False)):
        mapped = sorted("/".join(t.path) for t in parameter_map(config))
        params = sorted("/".join(k.key for k in path) for path, _ in
                        jax.tree_util.tree_leaves_with_path(param_shapes(config)))
        assert mapped == params
        assert len(hf_shapes(config)) == len(params)


# ---------------------------------------------------------------------------------------------
# Hugging Face export and import, without torch.


def test_hf_export_writes_config_tokenizer_and_readme(runs, hf_exports, micro_config):
    out = hf_exports["tied"]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == (64, 2, 4, 2, 192, 512)
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == micro_config.rope_theta
    assert (config["bos_token_id"], config["eos_token_id"], config["torch_dtype"]) == (BOS_ID, EOS_ID, "float32")
    with safe_open(str(out / "model.safetensors"), framework="numpy") as reader:
        assert "lm_head.weight" not in reader.keys()  # tied: transformers ties it to the embedding
        assert reader.metadata() == {"format": "pt"}
    with safe_open(str(hf_exports["untied"] / "model.safetensors"), framework="numpy") as reader:
        assert "lm_head.weight" in reader.keys()
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer" and tokenizer_config["legacy"] is True
    readme = (out / "README.md").read_text()
    assert "micro" in readme and str(runs["tied"][2]) in readme and "from_pretrained" in readme
    assert not list(out.parent.glob(".*.tmp"))


def test_hf_export_readme_gives_the_runs_evaluation(runs, workspace):
    run_dir = workspace / "runs" / "evaluated"
    shutil.copytree(runs["tied"][2], run_dir)
    (run_dir / "eval.json").write_text(json.dumps({
        "step": 0, "data": "data/sample", "exact_match": {"accuracy": 0.8125},
        "validation": {"loss": 1.5, "perplexity": 4.4817, "bits_per_byte": 1.2345}}))
    lumi(export_command, "--run", run_dir, "--out", workspace / "hf-evaluated")
    readme = (workspace / "hf-evaluated" / "README.md").read_text()
    assert "bits per byte: 1.2345" in readme and "perplexity: 4.4817" in readme and "accuracy 0.812" in readme


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_hf_export_then_import_round_trips_every_tensor_exactly(name, runs, hf_exports, workspace, capsys):
    config, params, _run_dir = runs[name]
    out = workspace / "imported" / name
    assert lumi(import_command, "--from", hf_exports[name], "--out", out) == 0
    assert "wrote the run" in capsys.readouterr().out
    loaded = load_run(out)
    assert_trees_equal(params, loaded.params)
    assert loaded.step == 0
    assert loaded.tokenizer.sha256 == load_run(runs[name][2]).tokenizer.sha256
    strip = {"name", "description"}
    assert {k: v for k, v in loaded.model_config.to_dict().items() if k not in strip} == \
           {k: v for k, v in config.to_dict().items() if k not in strip}
    stored = json.loads((out / "config.json").read_text())
    assert stored["init_from"].startswith("hf:") and stored["imported_from"]["tensors"] == len(parameter_map(config))
    assert stored["data"] == {"path": None, "tokenizer_sha256": loaded.tokenizer.sha256, "meta": None}


def test_bfloat16_export_round_trips_as_bfloat16_values(runs, workspace):
    _config, params, run_dir = runs["untied"]
    out = workspace / "hf-bf16"
    lumi(export_command, "--run", run_dir, "--out", out, "--dtype", "bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="numpy") as reader:
        assert {str(reader.get_slice(k).get_dtype()) for k in reader.keys()} == {"BF16"}
    lumi(import_command, "--from", out, "--out", workspace / "imported-bf16")
    rounded = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16).astype(np.float32), params)
    assert_trees_equal(rounded, load_run(workspace / "imported-bf16").params)


def shard(export: Path, into: Path) -> Path:
    """A copy of an export whose weights are split into two shards with an index."""
    shutil.copytree(export, into)
    (into / "model.safetensors").unlink()
    with safe_open(str(export / "model.safetensors"), framework="numpy") as reader:
        tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, into / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (into / "model.safetensors.index.json").write_text(json.dumps(index))
    return into


def test_sharded_checkpoint_imports(runs, hf_exports, workspace):
    sharded = shard(hf_exports["untied"], workspace / "sharded-ok")
    lumi(import_command, "--from", sharded, "--out", workspace / "imported-sharded")
    assert_trees_equal(runs["untied"][1], load_run(workspace / "imported-sharded").params)


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def break_missing_shard(d: Path) -> None:
    (d / "model-00002-of-00002.safetensors").unlink()


def break_partial_index(d: Path) -> None:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.norm.weight"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def break_bias_tensor(d: Path) -> None:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    save_file({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}, d / "bias.safetensors")
    index["weight_map"]["model.layers.0.self_attn.q_proj.bias"] = "bias.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def break_pickle_only(d: Path) -> None:
    for file in d.glob("*.safetensors"):
        file.unlink()
    (d / "model.safetensors.index.json").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not read")


REFUSALS = {
    "another architecture": (lambda d: edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2"),
                             "not LlamaForCausalLM"),
    "rope scaling": (lambda d: edit_config(d, rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    "attention bias": (lambda d: edit_config(d, attention_bias=True), "attention_bias"),
    "mlp bias": (lambda d: edit_config(d, mlp_bias=True), "mlp_bias"),
    "a bias tensor": (break_bias_tensor, "q_proj.bias"),
    "a missing shard": (break_missing_shard, "model-00002-of-00002.safetensors"),
    "a partial index": (break_partial_index, "lacks tensor model.norm.weight"),
    "pickle weights only": (break_pickle_only, "pickle"),
    "other special ids": (lambda d: edit_config(d, bos_token_id=128000), "bos_token_id"),
    "a shape mismatch": (lambda d: edit_config(d, intermediate_size=256), "shape"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_import_refuses_with_one_line_and_writes_nothing(case, hf_exports, workspace, capsys):
    breaks, says = REFUSALS[case]
    source = shard(hf_exports["untied"], workspace / "broken" / case.replace(" ", "-"))
    breaks(source)
    out = workspace / "refused" / case.replace(" ", "-")
    assert_refused(capsys, import_command, "--from", source, "--out", out, says=says)
    assert not out.exists() and not (out.parent / f".{out.name}.tmp").exists()


def test_import_refuses_an_existing_run_and_a_mismatched_tokenizer(hf_exports, runs, workspace, capsys, texts):
    existing = runs["tied"][2]
    before = sorted(p.name for p in existing.iterdir())
    assert_refused(capsys, import_command, "--from", hf_exports["tied"], "--out", existing, says="not empty")
    assert sorted(p.name for p in existing.iterdir()) == before
    other = train_tokenizer(texts, 400, workspace / "other-tokenizer.model")
    assert_refused(capsys, import_command, "--from", hf_exports["tied"], "--out", workspace / "never",
                   "--tokenizer", other.path, says="400 pieces")
    assert not (workspace / "never").exists()


def test_import_without_tokenizer_refuses_generation_until_one_is_given(hf_exports, runs, workspace, capsys,
                                                                         tokenizer_path):
    bare = workspace / "no-tokenizer"
    shutil.copytree(hf_exports["tied"], bare)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink()
    lumi(import_command, "--from", bare, "--out", workspace / "imported-bare")
    assert "--tokenizer" in capsys.readouterr().out
    assert not (workspace / "imported-bare" / "tokenizer.model").exists()
    with pytest.raises(UserError, match="tokenizer"):
        load_run(workspace / "imported-bare")
    lumi(import_command, "--from", bare, "--out", workspace / "imported-given", "--tokenizer", tokenizer_path)
    assert_trees_equal(runs["tied"][1], load_run(workspace / "imported-given").params)


def test_hf_export_refuses_to_overwrite(runs, hf_exports, capsys):
    before = (hf_exports["tied"] / "model.safetensors").stat().st_mtime_ns
    assert_refused(capsys, export_command, "--run", runs["tied"][2], "--out", hf_exports["tied"], says="not empty")
    assert (hf_exports["tied"] / "model.safetensors").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------
# llama2.c: read the files back with a small NumPy reader.


def read_llama2c(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The reader run.c is, in NumPy: the header, then each tensor kind for all layers."""
    data = path.read_bytes()
    header = dict(zip(HEADER_FIELDS, struct.unpack("<7i", data[:28]), strict=True))
    dim, hidden, layers, heads, kv_heads = (header[k] for k in HEADER_FIELDS[:5])
    vocab, seq_len = abs(header["vocab_size"]), header["max_seq_len"]
    K = dim // heads
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    shapes = [("token_embedding", (vocab, dim)), ("rms_att_weight", (layers, dim)),
              ("wq", (layers, heads * K, dim)), ("wk", (layers, kv_heads * K, dim)), ("wv", (layers, kv_heads * K, dim)),
              ("wo", (layers, dim, heads * K)), ("rms_ffn_weight", (layers, dim)), ("w1", (layers, hidden, dim)),
              ("w2", (layers, dim, hidden)), ("w3", (layers, hidden, dim)), ("rms_final_weight", (dim,)),
              ("freq_cis_real", (seq_len, K // 2)), ("freq_cis_imag", (seq_len, K // 2))]
    if header["vocab_size"] < 0:
        shapes.append(("wcls", (vocab, dim)))
    tensors, offset = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        tensors[name] = floats[offset: offset + size].reshape(shape)
        offset += size
    assert offset == floats.size, "the file has bytes after the last tensor"
    return header, tensors


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_llama2c_export_reads_back_tensor_equal(name, runs, workspace):
    config, params, run_dir = runs[name]
    out_dir = workspace / "llama2c" / name
    out_dir.mkdir(parents=True)
    lumi(export_command, "--run", run_dir, "--format", "llama2c", "--out", out_dir / "model.bin")
    header, tensors = read_llama2c(out_dir / "model.bin")
    vocab = config.vocab_size if config.tie_embeddings else -config.vocab_size
    assert list(header.values()) == [64, 192, 2, 4, config.kv_heads, vocab, 128]
    layers = [params[f"layers_{i}"] for i in range(config.n_layers)]
    np.testing.assert_array_equal(tensors["token_embedding"], params["embed"]["embedding"])
    np.testing.assert_array_equal(tensors["rms_att_weight"], [p["attention_norm"]["scale"] for p in layers])
    np.testing.assert_array_equal(tensors["rms_ffn_weight"], [p["mlp_norm"]["scale"] for p in layers])
    for kind in ("wq", "wk", "wv", "wo"):  # (out, in): the kernels transposed, RoPE layout unchanged
        np.testing.assert_array_equal(tensors[kind], [p["attention"][kind]["kernel"].T for p in layers])
    for kind in ("w1", "w2", "w3"):
        np.testing.assert_array_equal(tensors[kind], [p["mlp"][kind]["kernel"].T for p in layers])
    np.testing.assert_array_equal(tensors["rms_final_weight"], params["final_norm"]["scale"])
    cos, sin = rope_tables(config)
    np.testing.assert_array_equal(tensors["freq_cis_real"], cos)
    np.testing.assert_array_equal(tensors["freq_cis_imag"], sin)
    position, pair = 5, 3  # the angle of pair i at position t is t · theta^(-2i/K)
    angle = position * config.rope_theta ** (-2 * pair / config.head_dim)
    assert tensors["freq_cis_real"][position, pair] == pytest.approx(np.cos(angle), abs=1e-6)
    if config.tie_embeddings:
        assert "wcls" not in tensors
    else:
        np.testing.assert_array_equal(tensors["wcls"], params["output"]["kernel"].T)


def run_c_logits(header: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """run.c's forward pass, transcribed to NumPy: one token at a time with a KV cache, RoPE on
    adjacent pairs with theta 10000, query head h reading key/value head h // (n_heads / n_kv_heads)."""
    dim, hidden, layers, heads, kv_heads = (header[k] for k in HEADER_FIELDS[:5])
    K, group, kv_dim = dim // heads, heads // kv_heads, dim * kv_heads // heads
    wcls = w.get("wcls", w["token_embedding"])
    keys, values = np.zeros((layers, len(tokens), kv_dim)), np.zeros((layers, len(tokens), kv_dim))

    def rmsnorm(x, weight):
        return weight * x / np.sqrt(np.mean(x * x) + 1e-5)

    def rotate(vector, pos):
        i = np.arange(0, vector.size, 2)
        angle = pos / 10000.0 ** ((i % K) / K)
        even, odd = vector[i].copy(), vector[i + 1].copy()
        vector[i], vector[i + 1] = even * np.cos(angle) - odd * np.sin(angle), even * np.sin(angle) + odd * np.cos(angle)

    logits = []
    for pos, token in enumerate(tokens):
        x = w["token_embedding"][token].astype(np.float64)
        for l in range(layers):
            xb = rmsnorm(x, w["rms_att_weight"][l])
            q, k, v = w["wq"][l] @ xb, w["wk"][l] @ xb, w["wv"][l] @ xb
            rotate(q, pos)
            rotate(k, pos)
            keys[l, pos], values[l, pos] = k, v
            attended = np.zeros(dim)
            for h in range(heads):
                kv = slice((h // group) * K, (h // group + 1) * K)
                scores = keys[l, : pos + 1, kv] @ q[h * K:(h + 1) * K] / np.sqrt(K)
                weights = np.exp(scores - scores.max())
                attended[h * K:(h + 1) * K] = (weights / weights.sum()) @ values[l, : pos + 1, kv]
            x = x + w["wo"][l] @ attended
            xb = rmsnorm(x, w["rms_ffn_weight"][l])
            gate, up = w["w1"][l] @ xb, w["w3"][l] @ xb
            x = x + w["w2"][l] @ (gate / (1 + np.exp(-gate)) * up)
        logits.append(wcls @ rmsnorm(x, w["rms_final_weight"]))
    return np.asarray(logits)


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_run_c_forward_on_the_bin_gives_lumi_logits(name, runs, workspace):
    config, params, run_dir = runs[name]
    out = workspace / "llama2c-forward" / f"{name}.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    lumi(export_command, "--run", run_dir, "--format", "llama2c", "--out", out)
    tokens = [BOS_ID, *np.random.default_rng(1).integers(3, config.vocab_size, 15).tolist()]
    header, weights = read_llama2c(out)
    ours = np.asarray(forward(config, params, np.asarray([tokens])))[0]
    np.testing.assert_allclose(run_c_logits(header, weights, tokens), ours, atol=1e-4)


def read_tokenizer_bin(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    data = path.read_bytes()
    (max_length,), offset, entries = struct.unpack_from("<i", data), 4, []
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        entries.append((score, data[offset: offset + length]))
        offset += length
    return max_length, entries


def test_llama2c_tokenizer_bin_reads_back(runs, workspace, tokenizer_path):
    out_dir = workspace / "llama2c-tokenizer"
    out_dir.mkdir()
    lumi(export_command, "--run", runs["tied"][2], "--format", "llama2c", "--out", out_dir / "a.bin")
    max_length, entries = read_tokenizer_bin(out_dir / "tokenizer.bin")
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    assert len(entries) == processor.get_piece_size() == 512
    for token_id, (score, piece) in enumerate(entries):
        assert score == pytest.approx(processor.get_score(token_id))
        if token_id == BOS_ID:
            assert piece == b"\n<s>\n"
        elif token_id == EOS_ID:
            assert piece == b"\n</s>\n"
        else:
            assert piece == processor.id_to_piece(token_id).replace("▁", " ").encode()
    assert max_length == max(len(piece) for _, piece in entries)
    assert (0.0, b"<0x0A>") in entries  # byte fallback stays as text; run.c decodes it
    # A second model of the same tokenizer may share the directory; nothing is overwritten.
    lumi(export_command, "--run", runs["tied"][2], "--format", "llama2c", "--out", out_dir / "b.bin")
    assert (out_dir / "b.bin").read_bytes() == (out_dir / "a.bin").read_bytes()


def test_llama2c_export_refusals(runs, workspace, tokenizer_path, micro_config, capsys):
    out_dir = workspace / "llama2c-refusals"
    out_dir.mkdir()
    (out_dir / "taken.bin").write_bytes(b"keep me")
    assert_refused(capsys, export_command, "--run", runs["tied"][2], "--format", "llama2c",
                   "--out", out_dir / "taken.bin", says="exists")
    assert (out_dir / "taken.bin").read_bytes() == b"keep me"
    (out_dir / "tokenizer.bin").write_bytes(b"another tokenizer")
    assert_refused(capsys, export_command, "--run", runs["tied"][2], "--format", "llama2c",
                   "--out", out_dir / "new.bin", says="another tokenizer")
    assert not (out_dir / "new.bin").exists()
    theta = dataclasses.replace(micro_config, rope_theta=500000.0)
    run_dir = write_run(workspace / "runs" / "theta", theta, random_params(theta, 3),
                        tokenizer_path=tokenizer_path, init_from="test")
    assert_refused(capsys, export_command, "--run", run_dir, "--format", "llama2c",
                   "--out", workspace / "theta.bin", says="rope_theta")
    assert_refused(capsys, export_command, "--run", run_dir, "--format", "llama2c", "--dtype", "bfloat16",
                   "--out", workspace / "theta.bin", says="float32 only")
    assert not (workspace / "theta.bin").exists()


# ---------------------------------------------------------------------------------------------
# Parity with transformers (the `interop` extra).


def greedy_lumi(config, params, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding by full causal passes over one fixed-size buffer (one compilation)."""
    length = len(prompt) + new_tokens
    step = jax.jit(lambda tokens: forward(config, params, tokens))
    tokens = np.zeros((1, length), np.int32)
    tokens[0, : len(prompt)] = prompt
    for position in range(len(prompt), length):
        tokens[0, position] = int(np.argmax(np.asarray(step(tokens))[0, position - 1]))
        if tokens[0, position] == EOS_ID:
            return tokens[0, len(prompt): position + 1].tolist()
    return tokens[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_transformers_loads_the_export_with_the_same_logits_tokens_and_continuation(name, runs, hf_exports, texts):
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, params, run_dir = runs[name]
    model = AutoModelForCausalLM.from_pretrained(hf_exports[name]).eval()  # float32, the default
    hf_tokenizer = AutoTokenizer.from_pretrained(hf_exports[name])
    lumi_tokenizer = load_run(run_dir).tokenizer
    text = texts[1][:400] + "\n  Two  spaces, 42 and a café ☕."
    ids = lumi_tokenizer.encode(text, bos=True)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == text

    tokens = np.asarray([ids[:config.max_seq_len]])
    ours = np.asarray(forward(config, params, tokens))
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
    difference = float(np.abs(ours - theirs).max())
    print(f"{name}: max |logit difference| {difference:.2e} over {tokens.size} positions")
    assert difference < 1e-4

    prompt = lumi_tokenizer.encode("Once upon a time", bos=True)
    expected = greedy_lumi(config, params, prompt, 32)
    print(f"{name}: greedy continuation {expected}")
    assert len(expected) == 32  # these random weights never pick EOS: all 32 tokens are compared
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                pad_token_id=EOS_ID)
    assert output[0, len(prompt):].tolist() == expected


def test_importing_a_transformers_llama_gives_its_logits(workspace, tokenizer_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_config = LlamaConfig(vocab_size=512, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                            rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                            bos_token_id=BOS_ID, eos_token_id=EOS_ID, initializer_range=0.1)
    model = LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # norms away from 1, so a swapped norm would show
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    source = workspace / "transformers-random"
    model.save_pretrained(source, safe_serialization=True)
    out = workspace / "imported-transformers"
    lumi(import_command, "--from", source, "--out", out, "--tokenizer", tokenizer_path)
    loaded = load_run(out)
    assert (loaded.model_config.n_kv_heads, loaded.model_config.rope_theta) == (2, 5000.0)
    tokens = np.random.default_rng(0).integers(0, 512, (2, 64))
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
    ours = np.asarray(forward(loaded.model_config, loaded.params, tokens))
    difference = float(np.abs(ours - theirs).max())
    print(f"transformers -> lumi: max |logit difference| {difference:.2e}")
    assert difference < 1e-4
