"""Where text comes from: files and globs, JSONL, and TFDS (the named sources are in catalog.py).

A source turns a SOURCE string into a `Corpus`: a list of `Document`s, a kind ("text" or
"instructions"), and optionally its own validation documents (a source that knows better than a
random split, such as held-out combinations of instructions, supplies them).

How to add a source kind (both are rows of the tables in catalog.py):
- a named source (like `sample`): write `def load(spec: str, options: SourceOptions) -> Corpus`
  and add it to `catalog.NAMED_SOURCES` with a one-line help;
- a JSONL record shape (like `{"text": ...}`): write `def to_document(record) -> Document | None`
  (None: not this shape) and add it, with its kind, to `catalog.JSONL_FORMATS`.
A document made of segments `(text, is_target)` gets a loss mask (train_mask.bin / val_mask.bin):
1 on tokens from target segments, 0 on the others. A source that needs more files in the dataset
directory (held-out examples, say) sets `Corpus.write_extra_files`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lumi_jax.data.text import (
    TextStats,
    decode_utf8,
    normalise_text,
    read_text_file,
    split_documents,
)
from lumi_jax.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")
KINDS = ("text", "instructions")


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: text segments, each marked as a training target or as context only."""

    segments: tuple[tuple[str, bool], ...]

    @classmethod
    def of_text(cls, text: str) -> Document:
        return cls(((text, True),))

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)

    @property
    def all_targets(self) -> bool:
        return all(is_target for _, is_target in self.segments)


@dataclasses.dataclass
class Corpus:
    documents: list[Document]
    kind: str = "text"
    source: str = ""  # a description for meta.json, e.g. "sample(size_mb=4, seed=0)"
    val_documents: list[Document] | None = None  # None: prepare splits `documents` itself
    stats: TextStats = dataclasses.field(default_factory=TextStats)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # source-specific facts for meta.json
    # Optional: writes source-specific files into the dataset directory (still the hidden partial
    # one) as write_extra_files(directory, train_documents, val_documents) -> facts for meta.json.
    write_extra_files: Callable[[Path, list[Document], list[Document]], dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    seed: int = 0
    errors: str = "strict"
    size_mb: float | None = None  # for generated sources
    family_weights: Mapping[str, int] | None = None  # sample-instructions: the training mix (instructions.py)


SourceLoader = Callable[[str, SourceOptions], Corpus]
# name -> (fn(record) -> Document | list[Document] | None, kind): the record shapes a .jsonl may hold.
JsonlFormats = Mapping[str, tuple[Callable[[dict], Any], str]]
PATH_SOURCES = "a .txt/.md file, a directory, a glob or a .jsonl file; or tfds:NAME[:SPLIT]"


# ---------------------------------------------------------------------------------------------
# Files: a .txt/.md file, a directory (recursive), a glob, or a .jsonl file.


def resolve_paths(spec: str, describe: str = PATH_SOURCES) -> list[Path]:
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise UserError(f"{spec}: the glob matches no files; check the pattern")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise UserError(f"{spec}: the directory has no .txt or .md files; point at a folder with text")
        return files
    if path.exists():
        return [path]
    raise UserError(f"{spec}: no such file, directory or source; give {describe}")


def load_paths(spec: str, options: SourceOptions, formats: JsonlFormats, describe: str = PATH_SOURCES) -> Corpus:
    files = resolve_paths(spec, describe)
    documents: list[Document] = []
    stats = TextStats()
    kinds: set[str] = set()
    empty_files = 0
    for path in files:
        if path.suffix.lower() == ".jsonl":
            file_documents, file_stats, kind = read_jsonl(path, formats, options.errors)
            kinds.add(kind)
        else:
            text, file_stats = read_text_file(path, options.errors)
            file_documents = [Document.of_text(d) for d in split_documents(text)]
            kinds.add("text")
        stats.add(file_stats)
        if not file_documents:
            if len(files) == 1:
                raise UserError(f"{path}: is empty (no text after normalisation); give a file with text")
            empty_files += 1  # one empty file among many is skipped (and counted), not fatal
            continue
        documents.extend(file_documents)
    if not documents:
        raise UserError(f"{spec}: all {len(files)} files are empty (no text after normalisation); give files with text")
    if len(kinds) > 1:
        raise UserError(f"{spec}: mixes plain text and instruction records; prepare them as separate datasets")
    return Corpus(documents=documents, kind=kinds.pop(), source=spec, stats=stats,
                  details={"files": [str(p) for p in files[:20]] + (["..."] if len(files) > 20 else []),
                           "file_count": len(files), "empty_files_skipped": empty_files})


def text_record(record: dict) -> Document | None:
    """The plain-text record shape: {"text": "..."}."""
    text = record.get("text")
    if isinstance(text, str):
        return Document.of_text(text)
    return None


def match_jsonl_format(record: dict, formats: JsonlFormats) -> tuple[Document | None, str]:
    """The first record shape that accepts the record, as (document, kind)."""
    for to_document, kind in formats.values():
        document = to_document(record)
        if document is not None:
            return document, kind
    return None, ""


def read_jsonl(path: Path, formats: JsonlFormats, errors: str = "strict") -> tuple[list[Document], TextStats, str]:
    """Each line one JSON object, in one of the record shapes `formats`; all lines share a kind."""
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    content, stats = decode_utf8(path.read_bytes(), str(path), errors)
    documents: list[Document] = []
    kind_seen: str | None = None
    for line_number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: line {line_number} is not valid JSON ({error.msg}); "
                            "each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {line_number} is not a JSON object; each line must be one object")
        try:
            document, kind = match_jsonl_format(record, formats)
        except UserError as error:  # a record of a known shape with a bad field
            raise UserError(f"{path}: line {line_number}: {error}") from None
        if document is None:
            shapes = ", ".join(formats)
            raise UserError(f"{path}: line {line_number} has no recognised fields "
                            f"(keys: {', '.join(sorted(record)) or 'none'}); records need one of the shapes: {shapes} "
                            "(e.g. a string field 'text')")
        if kind_seen is not None and kind != kind_seen:
            raise UserError(f"{path}: line {line_number} is a {kind} record after {kind_seen} records; "
                            "keep one kind of record per file")
        kind_seen = kind
        # A record may give several documents (a chat: one example per assistant turn).
        for one in document if isinstance(document, list) else [document]:
            # JSON strings may carry CR or control characters too: normalise each segment.
            normalised = Document(tuple((normalise_text(text), is_target) for text, is_target in one.segments))
            if normalised.text.strip():
                documents.append(normalised)
    return documents, stats, kind_seen or "text"


# ---------------------------------------------------------------------------------------------
# TensorFlow Datasets: optional, imported only when a tfds: source is asked for.


def load_tfds(spec: str, options: SourceOptions) -> Corpus:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise UserError(f"'{spec}': write a TFDS source as tfds:NAME or tfds:NAME:SPLIT (e.g. tfds:tiny_shakespeare:train)")
    name = parts[1]
    split = parts[2] if len(parts) == 3 and parts[2] else "train"
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"'{spec}' needs TensorFlow Datasets, which is not installed; "
                        "run: .venv/bin/pip install -e '.[tfds]'") from None
    try:
        dataset = tfds.load(name, split=split, download=False)
    except Exception as error:  # TFDS raises many types here; all mean "not available locally"
        raise UserError(f"'{spec}': TFDS cannot load {name}:{split} from the local data directory "
                        f"({_first_line(error)}); download it once with `tfds build {name}` while online, "
                        "or set TFDS_DATA_DIR to where it is") from None
    documents: list[Document] = []
    stats = TextStats()
    for example in tfds.as_numpy(dataset):
        value = _tfds_text(example, spec)
        text, example_stats = decode_utf8(value, f"{spec} example {len(documents)}", options.errors)
        stats.add(example_stats)
        documents.extend(Document.of_text(d) for d in split_documents(text))
    if not documents:
        raise UserError(f"'{spec}': the split has no text; choose another split or dataset")
    return Corpus(documents=documents, kind="text", source=spec, stats=stats)


def _tfds_text(example: Any, spec: str) -> bytes:
    if isinstance(example, bytes):
        return example
    if isinstance(example, dict):
        if isinstance(example.get("text"), bytes):
            return example["text"]
        for value in example.values():
            if isinstance(value, bytes):
                return value
    raise UserError(f"'{spec}': examples have no text feature; use a text dataset (one with a 'text' field)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
