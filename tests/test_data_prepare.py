"""`lumi prepare`: the dataset it writes, and every bad input failing cleanly (exit 2, nothing left)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lumi_jax.cli import main
from lumi_jax.data.loader import TokenDataset
from lumi_jax.data.prepare import prepare_dataset, token_dtype_for
from lumi_jax.data.sample_corpus import generate_stories
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, Tokenizer

SIZE_MB = 0.2
REQUIRED_META = ("format_version", "kind", "source", "vocab_size", "tokenizer_sha256", "token_dtype", "seed",
                 "train_tokens", "val_tokens", "train_documents", "val_documents", "train_bytes", "val_bytes",
                 "bytes_per_token", "created")


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sample"
    prepare_dataset("sample", out, vocab_size=512, size_mb=SIZE_MB, seed=3, log=None)
    return out


def split_documents_from_tokens(tokens: np.ndarray) -> list[list[int]]:
    """Cut a packed split at EOS; every piece must start with BOS."""
    eos_positions = np.flatnonzero(tokens == EOS_ID)
    pieces, start = [], 0
    for end in eos_positions:
        pieces.append(tokens[start:end + 1].tolist())
        start = end + 1
    assert start == len(tokens), "the split must end with an EOS"
    return pieces


def test_layout_and_meta(sample_dir):
    assert sorted(p.name for p in sample_dir.iterdir()) == ["meta.json", "tokenizer.model", "train.bin", "val.bin"]
    meta = json.loads((sample_dir / "meta.json").read_text())
    for key in REQUIRED_META:
        assert key in meta, key
    assert meta["kind"] == "text" and meta["token_dtype"] == "uint16" and meta["vocab_size"] == 512
    assert meta["tokenizer_sha256"] == Tokenizer.load(sample_dir / "tokenizer.model").sha256
    assert (sample_dir / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    total_bytes = meta["train_bytes"] + meta["val_bytes"]
    assert meta["bytes_per_token"] == pytest.approx(total_bytes / (meta["train_tokens"] + meta["val_tokens"]))
    assert not list(sample_dir.parent.glob(".sample.*"))  # no partial directory left behind


def test_every_document_is_bos_text_eos_and_validation_documents_are_held_out(sample_dir):
    dataset = TokenDataset(sample_dir)
    tokenizer = Tokenizer.load(dataset.tokenizer_path)
    stories = generate_stories(SIZE_MB, seed=3)
    decoded = {}
    for name in ("train", "val"):
        pieces = split_documents_from_tokens(np.asarray(dataset.split(name).tokens))
        assert len(pieces) == dataset.meta[f"{name}_documents"]
        assert all(p[0] == BOS_ID and p[-1] == EOS_ID for p in pieces)
        assert all(BOS_ID not in p[1:-1] and EOS_ID not in p[1:-1] for p in pieces)
        decoded[name] = [tokenizer.decode(p[1:-1]) for p in pieces]
        assert sum(len(t.encode()) for t in decoded[name]) == dataset.meta[f"{name}_bytes"]
    assert sorted(decoded["train"] + decoded["val"]) == sorted(stories)  # every story, exactly once
    assert not set(decoded["val"]) & set(decoded["train"])
    assert 0 < len(decoded["val"]) < len(decoded["train"])


def test_same_seed_same_files(sample_dir, tmp_path):
    again = tmp_path / "again"
    prepare_dataset("sample", again, vocab_size=512, size_mb=SIZE_MB, seed=3, log=None)
    for name in ("tokenizer.model", "train.bin", "val.bin"):
        assert (again / name).read_bytes() == (sample_dir / name).read_bytes(), name


def test_reusing_a_tokenizer_and_force_replacing(sample_dir, tmp_path):
    out = tmp_path / "reuse"
    out.mkdir()
    (out / "old-file").write_text("replaced only with --force")
    tokenizer_path = str(sample_dir / "tokenizer.model")
    meta = prepare_dataset("sample", out, tokenizer=tokenizer_path, size_mb=0.05, seed=9, force=True, log=None)
    assert meta["tokenizer_sha256"] == json.loads((sample_dir / "meta.json").read_text())["tokenizer_sha256"]
    assert meta["tokenizer_trained"] is False
    assert not (out / "old-file").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reuse"]


def test_uint32_is_chosen_above_65535_ids():
    assert token_dtype_for(512) == np.uint16
    assert token_dtype_for(65535) == np.uint16
    assert token_dtype_for(65536) == np.uint32


def test_war_and_peace_prepares_with_documents_from_sections(shared_data_dir, tmp_path):
    out = tmp_path / "wp"
    meta = prepare_dataset(str(shared_data_dir / "war_and_peace.txt"), out, model="micro", log=None)
    assert meta["vocab_size"] == 512
    assert meta["text_stats"]["had_bom"] == 1 and meta["text_stats"]["had_crlf"] == 1
    assert meta["train_documents"] > 100 and meta["val_documents"] >= 5
    assert 1.5 < meta["bytes_per_token"] < 4.0  # vocab 512: short pieces


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line on stderr, exit status 2, and nothing created or lost.


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    error = capsys.readouterr().err.strip()
    return exit_info.value.code, error


def assert_clean_failure(capsys, tmp_path, argv, expected, out_name="out"):
    before = sorted(p.name for p in tmp_path.iterdir())
    code, error = run_cli(capsys, "prepare", *argv, "--out", str(tmp_path / out_name))
    assert code == 2
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error
    assert expected in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no partial directory


def test_missing_path(capsys, tmp_path):
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "missing.txt")], "no such file")


def test_empty_file(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("\ufeff\r\n\n  \n")
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "empty.txt")], "is empty")


def test_binary_file(capsys, tmp_path):
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 100)
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "blob.txt")], "looks like a binary file")


def test_invalid_utf8(capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 society\n".encode("latin-1") * 50)
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "latin1.txt")],
                         "latin1.txt: invalid UTF-8 at byte offset 3")


def test_invalid_utf8_with_errors_replace_succeeds_and_counts(tmp_path):
    text = "\n\n\n".join(f"Caf\u00e9 number {i} is open." for i in range(40))
    (tmp_path / "latin1.txt").write_bytes(text.encode("latin-1"))
    meta = prepare_dataset(str(tmp_path / "latin1.txt"), tmp_path / "out", vocab_size=300,
                           errors="replace", log=None)
    assert meta["text_stats"]["replaced_sequences"] == 40


def test_vocab_too_large(capsys, tmp_path):
    (tmp_path / "small.txt").write_text("a short text\n\n\nwith two documents\n")
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "small.txt"), "--vocab-size", "4096"],
                         "the largest that works is")


def test_corpus_smaller_than_one_window(capsys, tmp_path, sample_dir):
    (tmp_path / "small.txt").write_text("\n\n\n".join(["Hello there, friend."] * 10))
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "small.txt"), "--model", "micro",
                                            "--tokenizer", str(sample_dir / "tokenizer.model")],
                         "fewer than one window of 129")


def test_existing_output_directory_is_kept(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_clean_failure(capsys, tmp_path, ["--source", "sample", "--size-mb", "0.05"],
                         "already exists; choose another --out, or pass --force")
    assert (out / "precious.txt").read_text() == "keep me"


def test_a_failing_force_keeps_the_old_dataset(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_clean_failure(capsys, tmp_path, ["--source", str(tmp_path / "missing.txt"), "--force"], "no such file")
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_values(capsys, tmp_path):
    assert_clean_failure(capsys, tmp_path, ["--source", "sample", "--val-fraction", "1.5"], "--val-fraction")
    assert_clean_failure(capsys, tmp_path, ["--source", "sample", "--size-mb", "-1"], "--size-mb")
    assert_clean_failure(capsys, tmp_path, ["--source", "sample", "--vocab-size", "10"], "--vocab-size is 10")
    assert_clean_failure(capsys, tmp_path, ["--source", "sample", "--tokenizer", str(tmp_path / "x.model")],
                         "no such tokenizer model file")


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lumi_jax.cli", "prepare", "--source", str(tmp_path / "nope"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_default_sample_supports_the_tiny_vocab(tmp_path):
    """The prototype session prepares the default sample for the tiny model (vocab 4096)."""
    meta = prepare_dataset("sample", tmp_path / "default", log=None)
    assert meta["vocab_size"] == 4096 and meta["source"] == "sample(size_mb=4, seed=0)"
    assert meta["train_bytes"] + meta["val_bytes"] >= 3_900_000


def test_an_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    from lumi_jax.data import prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "pack_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("sample", tmp_path / "out", vocab_size=512, size_mb=0.05, log=None)
    assert list(tmp_path.iterdir()) == []


def test_partial_directories_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / ".out.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"half")
    prepare_dataset("sample", tmp_path / "out", vocab_size=512, size_mb=0.05, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_data_info_shows_counts_and_decoded_windows(sample_dir, capsys):
    assert main(["data-info", str(sample_dir), "--samples", "2", "--sample-tokens", "16"]) == 0
    output = capsys.readouterr().out
    meta = json.loads((sample_dir / "meta.json").read_text())
    assert f"{meta['train_tokens']:,} tokens" in output
    assert output.count("--- validation window") == 2


def test_a_source_can_write_extra_files_and_segment_masks(tmp_path, monkeypatch, sample_dir):
    from lumi_jax.data import catalog, sources

    def question_answers(spec, options):
        documents = [sources.Document(((f"Q{i}? ", False), (f"A{i}.", True))) for i in range(30)]

        def write_extra_files(directory, train, val):
            (directory / "held_out.txt").write_text(str(len(val)))
            return {"held_out": len(val)}

        return sources.Corpus(documents=documents[:25], val_documents=documents[25:], kind="instructions",
                              source="qa", write_extra_files=write_extra_files)

    monkeypatch.setitem(catalog.NAMED_SOURCES, "test-qa", (question_answers, "test"))
    meta = prepare_dataset("test-qa", tmp_path / "qa", tokenizer=sample_dir / "tokenizer.model", log=None)
    assert meta["kind"] == "instructions" and meta["has_mask"] is True
    assert meta["source_details"]["held_out"] == 5 and (tmp_path / "qa" / "held_out.txt").read_text() == "5"
    dataset = TokenDataset(tmp_path / "qa")
    tokenizer = Tokenizer.load(dataset.tokenizer_path)
    split = dataset.split("val")
    tokens, mask = np.asarray(split.tokens), np.asarray(split.mask)
    first = split_documents_from_tokens(tokens)[0]
    first_mask = mask[:len(first)]
    assert tokenizer.decode(np.array(first)[first_mask == 1][:-1]) == "A25."  # targets: the answer, then EOS
    assert tokenizer.decode(np.array(first)[first_mask == 0][1:]) == "Q25? "  # context: the question (after BOS)
