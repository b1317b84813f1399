"""Token files you can trust: prepare records each split's sha256 and largest id; training and
evaluation refuse ids outside the vocabulary; `lumi data-info --verify` compares the hashes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lumi_jax import cli
from lumi_jax.data.loader import CHECKSUM_META, TokenDataset, file_sha256, max_token_id
from lumi_jax.errors import UserError


@pytest.fixture
def copy(dataset_dir, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(dataset_dir, target)
    return target


def poke(path, offset, value, dtype=np.uint16):
    tokens = np.memmap(path, dtype=dtype, mode="r+")
    tokens[offset] = value
    tokens.flush()
    del tokens


def test_prepare_records_the_sha256_and_largest_id_of_each_split(dataset_dir):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    for name in ("train", "val"):
        assert meta[f"{name}_sha256"] == file_sha256(dataset_dir / f"{name}.bin")
        tokens = np.fromfile(dataset_dir / f"{name}.bin", dtype=np.uint16)
        assert meta[f"{name}_max_id"] == int(tokens.max()) < meta["vocab_size"]
    dataset = TokenDataset(dataset_dir)
    dataset.check_ids(512)
    assert dataset.verify_checksums() == ["train.bin", "val.bin"]


def test_max_token_id_reads_in_chunks(monkeypatch):
    monkeypatch.setattr("lumi_jax.data.loader.CHUNK_ELEMENTS", 7)
    values = np.arange(100, dtype=np.uint16)[::-1].copy()
    values[93] = 700
    assert max_token_id(values) == 700 and max_token_id(np.zeros(0, np.uint16)) == -1


def test_an_id_outside_the_vocabulary_is_refused_naming_the_file_and_the_fix(copy):
    poke(copy / "val.bin", 5, 600)  # vocab 512
    with pytest.raises(UserError, match=r"val\.bin: holds token id 600, outside the vocabulary of 512 ids.*"
                                        r"lumi prepare"):
        TokenDataset(copy).check_ids(512)


def test_a_changed_largest_id_and_a_changed_hash_are_found(copy):
    tokens = np.fromfile(copy / "train.bin", dtype=np.uint16)
    recorded = json.loads((copy / "meta.json").read_text())["train_max_id"]
    poke(copy / "train.bin", int(np.argmax(tokens)), 3)  # the largest id, overwritten in range
    TokenDataset(copy).check_ids()  # in range: training's quick check lets it pass; --verify does not
    if int(np.sort(tokens)[-2]) != recorded:
        with pytest.raises(UserError, match="largest token id .* meta.json recorded"):
            TokenDataset(copy).check_ids(against_meta=True)
    with pytest.raises(UserError, match=r"train\.bin: its sha256 .* differs from the one in meta\.json"):
        TokenDataset(copy).verify_checksums()


def test_data_info_verify_passes_and_fails_in_one_line(copy, capsys):
    assert cli.main(["data-info", str(copy), "--verify", "--samples", "0"]) == 0
    assert "train.bin, val.bin match their sha256" in capsys.readouterr().out
    poke(copy / "train.bin", 10, int(np.fromfile(copy / "train.bin", dtype=np.uint16)[10]) ^ 1)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data-info", str(copy), "--verify", "--samples", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "train.bin" in err


def test_a_dataset_prepared_before_the_checksums_still_loads_and_its_ids_are_checked(copy, capsys):
    meta = json.loads((copy / "meta.json").read_text())
    for key in CHECKSUM_META:
        meta.pop(key)
    (copy / "meta.json").write_text(json.dumps(meta))
    dataset = TokenDataset(copy)
    dataset.check_ids(512)
    assert dataset.verify_checksums() == []
    assert cli.main(["data-info", str(copy), "--verify", "--samples", "0"]) == 0
    assert "records no checksums" in capsys.readouterr().out
    poke(copy / "train.bin", 0, 513)
    with pytest.raises(UserError, match="holds token id 513"):
        TokenDataset(copy).check_ids(512)


def test_an_unreadable_meta_json_is_one_clear_error(copy, monkeypatch):
    """(Simulated: chmod is no obstacle to root, who runs these tests in CI containers.)"""
    real_open = open

    def guarded(path, *args, **kwargs):
        if str(path).endswith("meta.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    with pytest.raises(UserError, match=r"meta\.json: cannot be read \(Permission denied\); check its permissions"):
        TokenDataset(copy)
