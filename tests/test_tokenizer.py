"""The tokenizer: lossless round trips, special ids, errors for impossible vocab sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lumi_jax.data.template import RESPONSE_MARKER, TEMPLATE_MARKERS, format_prompt
from lumi_jax.data.text import read_text_file
from lumi_jax.data.tokenizer import BOS_ID, EOS_ID, UNK_ID, Tokenizer, train_tokenizer
from lumi_jax.errors import UserError

WAR_AND_PEACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "war_and_peace.txt"

TRICKY_TEXTS = [
    "  two leading spaces, and trailing  ",
    "tabs\tinside\t\tand\nnewlines\n\n\nmany",
    "\n starts with a newline",
    "unseen characters: 日本語, ünïcödé, emoji 🦊, symbols ∑∞",
    "digits 1234567890 and 3.14159",
    "",
]


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Tokenizer:
    texts = ["Once upon a time, a little fox named Pip ran to the river.\n\n\"Hello!\" said Pip."] * 50
    texts.append("The quick brown fox jumps over the lazy dog. 0123456789")
    return train_tokenizer(texts, 320, tmp_path_factory.mktemp("tok") / "tokenizer.model", seed=0)


def test_special_ids_are_the_llama2c_convention(small_tokenizer):
    assert (UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert small_tokenizer.encode("a", bos=True, eos=True)[0] == BOS_ID
    assert small_tokenizer.encode("a", bos=True, eos=True)[-1] == EOS_ID
    assert small_tokenizer.vocab_size == 320


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip_is_exact_even_for_unseen_characters(small_tokenizer, text):
    ids = small_tokenizer.encode(text)
    assert UNK_ID not in ids  # byte fallback, never <unk>
    assert small_tokenizer.decode(ids) == text


def test_instruction_template_markers_are_single_pieces(small_tokenizer):
    """The corpus never had "Task:" or "Answer:", yet each is one token (a user-defined symbol),
    and a prompt in the template still round-trips."""
    for marker in TEMPLATE_MARKERS:
        assert [small_tokenizer.id_to_piece(i) for i in small_tokenizer.encode(marker)] == [marker]
    prompt = format_prompt("Name the fox.", "Pip ran to the river.")
    assert small_tokenizer.decode(small_tokenizer.encode(prompt)) == prompt
    assert small_tokenizer.encode(prompt).count(small_tokenizer.encode(RESPONSE_MARKER)[0]) == 1


def test_encode_batch_matches_encode(small_tokenizer):
    batch = small_tokenizer.encode_batch(TRICKY_TEXTS, eos=True)
    assert batch == [small_tokenizer.encode(t, eos=True) for t in TRICKY_TEXTS]


def test_load_records_hash_and_path(small_tokenizer):
    again = Tokenizer.load(small_tokenizer.path)
    assert again.sha256 == small_tokenizer.sha256
    assert len(again.sha256) == 64
    assert again.path == small_tokenizer.path


def test_same_seed_same_tokenizer(small_tokenizer, tmp_path):
    texts = ["Once upon a time, a little fox named Pip ran to the river.\n\n\"Hello!\" said Pip."] * 50
    texts.append("The quick brown fox jumps over the lazy dog. 0123456789")
    again = train_tokenizer(texts, 320, tmp_path / "again.model", seed=0)
    assert again.sha256 == small_tokenizer.sha256


def test_vocab_too_large_names_the_largest_that_works(tmp_path):
    with pytest.raises(UserError, match=r"too large for this corpus: the largest that works is \d+"):
        train_tokenizer(["a tiny corpus of a few words"], 4096, tmp_path / "t.model")
    assert not (tmp_path / "t.model").exists()


def test_loading_a_non_model_file_is_a_user_error(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        Tokenizer.load(bogus)
    with pytest.raises(UserError, match="no such tokenizer model file"):
        Tokenizer.load(tmp_path / "missing.model")


@pytest.mark.skipif(not WAR_AND_PEACE.exists(), reason="../shared/data/war_and_peace.txt is not available")
def test_war_and_peace_round_trip_bom_and_crlf_in_normalised_text_out(tmp_path):
    raw = WAR_AND_PEACE.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # the messiness this test is about
    text, stats = read_text_file(WAR_AND_PEACE)
    assert text == raw[3:].decode("utf-8").replace("\r\n", "\n")
    assert "\r" not in text and not text.startswith("\ufeff")
    assert stats.had_bom == 1 and stats.had_crlf == 1
    tokenizer = train_tokenizer([text], 1024, tmp_path / "wp.model")
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_vocab_too_small_names_the_smallest_that_works(tmp_path):
    with pytest.raises(UserError, match=r"too small for this corpus: it needs at least \d+"):
        train_tokenizer(["some text with letters abcdefghijklmnopqrstuvwxyz"], 262, tmp_path / "t.model")
