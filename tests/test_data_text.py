"""Reading and normalising text, the file/JSONL/TFDS sources, and the generated sample stories."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from lumi_jax.data.catalog import load_corpus
from lumi_jax.data.sample_corpus import StoryWriter, generate_stories
from lumi_jax.data.sources import SourceOptions
from lumi_jax.data.text import MAX_DOCUMENT_CHARS, decode_utf8, normalise_text, split_documents
from lumi_jax.errors import UserError


def test_bom_crlf_and_control_characters_are_normalised():
    text, stats = decode_utf8(b"\xef\xbb\xbfline one\r\nline\x00 two\rthree\tfour\x07\x1b\n", "x.txt")
    assert text == "line one\nline two\nthree\tfour\n"
    assert stats.had_bom == 1 and stats.had_crlf == 1 and stats.removed_control_chars == 3


def test_invalid_utf8_names_the_file_and_byte_offset():
    with pytest.raises(UserError, match=r"bad\.txt: invalid UTF-8 at byte offset 6 .*--errors replace"):
        decode_utf8(b"hello \xff world", "bad.txt")


def test_invalid_utf8_offset_counts_the_byte_order_mark():
    with pytest.raises(UserError, match="byte offset 5 "):
        decode_utf8(b"\xef\xbb\xbfab\xc3(", "bom.txt")


def test_replace_mode_replaces_and_counts():
    text, stats = decode_utf8(b"a\xffb\xfe\xfdc \xef\xbf\xbd", "x.txt", errors="replace")
    assert text == "a\ufffdb\ufffd\ufffdc \ufffd"
    assert stats.replaced_sequences == 3  # the U+FFFD already in the file is not counted


def test_binary_file_is_refused_even_in_replace_mode():
    binary = bytes(range(256)) * 64
    for errors in ("strict", "replace"):
        with pytest.raises(UserError, match="looks like a binary file"):
            decode_utf8(binary, "blob.bin", errors=errors)


def test_normalise_text_without_stats():
    assert normalise_text("a\r\nb\x00c") == "a\nbc"


def test_documents_split_at_section_breaks_and_long_sections_are_cut():
    text = "Chapter 1\n\nFirst.\n\n\n\nChapter 2\n\nSecond.\n \n\t\nChapter 3"
    assert split_documents(text) == ["Chapter 1\n\nFirst.", "Chapter 2\n\nSecond.", "Chapter 3"]
    paragraph = "word " * 1000
    long_text = "\n\n".join([paragraph] * 20)
    pieces = split_documents(long_text)
    assert len(pieces) > 1 and all(len(p) <= MAX_DOCUMENT_CHARS for p in pieces)
    assert "\n\n".join(pieces) == long_text.strip("\n")


def test_directory_source_reads_txt_and_md_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha\n\n\nbeta")
    (tmp_path / "sub" / "b.md").write_text("gamma")
    (tmp_path / "sub" / "c.json").write_text("{}")  # not text: ignored
    (tmp_path / "sub" / "empty.txt").write_text("\n\n")  # empty among others: skipped and counted
    corpus = load_corpus(str(tmp_path), SourceOptions())
    assert [d.text for d in corpus.documents] == ["alpha", "beta", "gamma"]
    assert corpus.stats.files == 3 and corpus.details["empty_files_skipped"] == 1
    globbed = load_corpus(str(tmp_path / "**" / "*.md"), SourceOptions())
    assert [d.text for d in globbed.documents] == ["gamma"]


def test_jsonl_text_records(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "first\r\ndoc"}), "", json.dumps({"text": "second", "id": 2})]
    path.write_text("\n".join(lines))
    corpus = load_corpus(str(path), SourceOptions())
    assert [d.text for d in corpus.documents] == ["first\ndoc", "second"]
    assert corpus.kind == "text"


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_corpus(str(path), SourceOptions())
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match="line 2 has no recognised fields"):
        load_corpus(str(path), SourceOptions())


def test_a_registered_jsonl_format_yields_masked_segments(tmp_path, monkeypatch):
    from lumi_jax.data import catalog, sources

    def question_answer(record):
        if "q" in record and "a" in record:
            return sources.Document(((f"Q: {record['q']}\nA: ", False), (record["a"], True)))
        return None

    monkeypatch.setitem(catalog.JSONL_FORMATS, "qa", (question_answer, "instructions"))
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    corpus = load_corpus(str(path), SourceOptions())
    assert corpus.kind == "instructions"
    assert corpus.documents[0].segments == (("Q: 2+2?\nA: ", False), ("4", True))


def test_missing_source_and_empty_glob_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file, directory or source"):
        load_corpus(str(tmp_path / "nope.txt"), SourceOptions())
    with pytest.raises(UserError, match="matches no files"):
        load_corpus(str(tmp_path / "*.txt"), SourceOptions())
    with pytest.raises(UserError, match="has no .txt or .md files"):
        load_corpus(str(tmp_path), SourceOptions())


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow_datasets is installed: the missing-extra message cannot show")
def test_tfds_without_the_extra_says_how_to_install_it():
    with pytest.raises(UserError, match=r"needs TensorFlow Datasets.*pip install -e '\.\[tfds\]'"):
        load_corpus("tfds:tiny_shakespeare", SourceOptions())


def test_sample_stories_are_deterministic_and_seed_dependent():
    assert generate_stories(0.05, seed=1) == generate_stories(0.05, seed=1)
    assert generate_stories(0.05, seed=1) != generate_stories(0.05, seed=2)
    stories = generate_stories(0.2, seed=0)
    assert sum(len(s) + 1 for s in stories) >= 200_000


def test_sample_stories_have_variety_dialogue_and_cause_and_effect():
    stories = generate_stories(0.5, seed=0)
    text = "\n".join(stories)
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert len(words) > 400
    assert text.count('"') > len(stories)  # characters talk
    assert "because" in words and "so" in words
    assert len(set(stories)) == len(stories)  # no story repeats
    # every story shape appears (a phrase that only that shape writes)
    markers = {"lost_and_found": "I will help you look!", "problem_and_help": "wanted to",
               "sharing": "had a turn", "discovery": "being brave", "mistake": "tell the truth",
               "weather": "picnic", "helping_animal": "got better and stronger", "race": "Let's have a race"}
    assert set(markers) == set(StoryWriter.SHAPES)
    for shape, marker in markers.items():
        assert marker in text, shape
    assert text.isascii()


def test_sample_size_is_validated():
    with pytest.raises(UserError, match="--size-mb"):
        generate_stories(0, seed=0)
