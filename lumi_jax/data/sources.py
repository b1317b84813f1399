"""Where text comes from: named sources (a registry), files and globs, JSONL, and TFDS.

A source turns a SOURCE string into a `Corpus`: a list of `Document`s, a kind ("text" or
"instructions"), and optionally its own validation documents (a source that knows better than a
random split, such as held-out combinations of instructions, supplies them).

How to add a source kind:
- a named source (like `sample`): write `def load(spec: str, options: SourceOptions) -> Corpus`
  and call `register_source("name", load, "one-line help")` in a module listed in
  `_PLUGIN_MODULES` below (imported lazily when the registry is first consulted);
- a JSONL record shape (like `{"text": ...}`): write `def to_document(record) -> Document | None`
  (None: not this shape) and call `register_jsonl_format("name", to_document, kind)`.
A document made of segments `(text, is_target)` gets a loss mask (train_mask.bin / val_mask.bin):
1 on tokens from target segments, 0 on the others. A source that needs more files in the dataset
directory (held-out examples, say) sets `Corpus.write_extra_files`.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumi_jax.data.text import TextStats, decode_utf8, read_text_file, split_documents
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


SourceLoader = Callable[[str, SourceOptions], Corpus]
_SOURCES: dict[str, tuple[SourceLoader, str]] = {}
_JSONL_FORMATS: dict[str, tuple[Callable[[dict], Document | None], str]] = {}
# Modules that register sources when imported; imported the first time a source is looked up.
# A module that does not exist (yet) is skipped; any other import error is raised.
_PLUGIN_MODULES = ("lumi_jax.data.sample_corpus", "lumi_jax.data.instructions")
_plugins_loaded = False


def register_source(name: str, loader: SourceLoader, help_text: str) -> None:
    _SOURCES[name] = (loader, help_text)


def register_jsonl_format(name: str, to_document: Callable[[dict], Document | None], kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    _JSONL_FORMATS[name] = (to_document, kind)


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for module in _PLUGIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                if error.name != module:
                    raise


def named_sources() -> dict[str, str]:
    _load_plugins()
    return {name: help_text for name, (_, help_text) in _SOURCES.items()}


def describe_sources() -> str:
    names = ", ".join(named_sources())
    return (f"one of: {names}; a .txt/.md file, a directory, a glob or a .jsonl file; "
            "or tfds:NAME[:SPLIT]")


def load_corpus(spec: str, options: SourceOptions) -> Corpus:
    """Resolve a SOURCE string to a corpus; every failure is a UserError naming the fix."""
    _load_plugins()
    if spec in _SOURCES:
        loader, _ = _SOURCES[spec]
        return loader(spec, options)
    if spec.startswith("tfds:"):
        return load_tfds(spec, options)
    if options.size_mb is not None:
        raise UserError(f"--size-mb applies to generated sources only, not '{spec}'; leave it out")
    return load_paths(spec, options)


# ---------------------------------------------------------------------------------------------
# Files: a .txt/.md file, a directory (recursive), a glob, or a .jsonl file.


def resolve_paths(spec: str) -> list[Path]:
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
    raise UserError(f"{spec}: no such file, directory or source; give {describe_sources()}")


def load_paths(spec: str, options: SourceOptions) -> Corpus:
    files = resolve_paths(spec)
    documents: list[Document] = []
    stats = TextStats()
    kinds: set[str] = set()
    empty_files = 0
    for path in files:
        if path.suffix.lower() == ".jsonl":
            file_documents, file_stats, kind = read_jsonl(path, options.errors)
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


def _text_record(record: dict) -> Document | None:
    text = record.get("text")
    if isinstance(text, str):
        return Document.of_text(text)
    return None


register_jsonl_format("text", _text_record, "text")


def _match_jsonl_format(record: dict) -> tuple[Document | None, str]:
    """The first registered record shape that accepts the record, as (document, kind)."""
    for to_document, kind in _JSONL_FORMATS.values():
        document = to_document(record)
        if document is not None:
            return document, kind
    return None, ""


def read_jsonl(path: Path, errors: str = "strict") -> tuple[list[Document], TextStats, str]:
    """Each line one JSON object, in any registered record shape; all lines must share a kind."""
    from lumi_jax.data.text import normalise_text

    _load_plugins()  # record shapes registered by plugin modules
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
            document, kind = _match_jsonl_format(record)
        except UserError as error:  # a record of a known shape with a bad field
            raise UserError(f"{path}: line {line_number}: {error}") from None
        if document is None:
            shapes = ", ".join(_JSONL_FORMATS)
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
