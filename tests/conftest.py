"""Shared fixtures. Tests use the micro config (~0.13M parameters) so each runs in seconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lumi_jax.config import load_model_config

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def micro_config():
    return load_model_config("micro")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only the development checkout has ../shared/data)")
    return SHARED_DATA


def replace_config(config, **changes):
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="session")
def compilation_cache():
    """What `lumi train` does: identical programs compile once, across tests and processes."""
    from lumi_jax.step import enable_compilation_cache

    enable_compilation_cache()


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """A small sample-story dataset (vocab 512) shared by the training tests; read, never written."""
    from lumi_jax.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "sample"
    prepare_dataset("sample", out, vocab_size=512, size_mb=0.2, log=None)
    return out
