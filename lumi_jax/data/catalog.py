"""The sources `lumi prepare --source` knows, as two explicit tables (no registry, no plugins).

    NAMED_SOURCES   a name (`sample`, `sample-instructions`) -> the function that makes its corpus
    JSONL_FORMATS   the record shapes a .jsonl file may hold -> a Document maker and the data kind

Anything else is a path (a file, a directory, a glob, a .jsonl) or `tfds:NAME[:SPLIT]`, read by
sources.py. To add a source, write its loader in its own module and add one row here.
"""

from __future__ import annotations

from lumi_jax.data.instructions import (
    DEFAULT_TRAIN_EXAMPLES,
    alpaca_record,
    chat_record,
    load_sample_instructions,
)
from lumi_jax.data.sample_corpus import DEFAULT_SIZE_MB, load_sample
from lumi_jax.data.sources import (
    Corpus,
    JsonlFormats,
    SourceLoader,
    SourceOptions,
    load_paths,
    load_tfds,
    text_record,
)
from lumi_jax.errors import UserError

NAMED_SOURCES: dict[str, tuple[SourceLoader, str]] = {
    "sample": (load_sample, f"generated short stories (default {DEFAULT_SIZE_MB:g} MB; --size-mb)"),
    "sample-instructions": (load_sample_instructions, "generated instruction/response pairs with held-out unseen "
                            f"combinations (default {DEFAULT_TRAIN_EXAMPLES:,} examples; --size-mb)"),
}

JSONL_FORMATS: JsonlFormats = {  # tried in order: the first shape that accepts a record wins
    "text": (text_record, "text"),
    "alpaca": (alpaca_record, "instructions"),
    "messages": (chat_record, "instructions"),
}


def named_sources() -> dict[str, str]:
    return {name: help_text for name, (_, help_text) in NAMED_SOURCES.items()}


def describe_sources() -> str:
    return (f"one of: {', '.join(NAMED_SOURCES)}; a .txt/.md file, a directory, a glob or a .jsonl file; "
            "or tfds:NAME[:SPLIT]")


def load_corpus(spec: str, options: SourceOptions) -> Corpus:
    """Resolve a SOURCE string to a corpus; every failure is a UserError naming the fix."""
    if spec in NAMED_SOURCES:
        loader, _ = NAMED_SOURCES[spec]
        return loader(spec, options)
    if spec.startswith("tfds:"):
        return load_tfds(spec, options)
    if options.size_mb is not None:
        raise UserError(f"--size-mb applies to generated sources only, not '{spec}'; leave it out")
    return load_paths(spec, options, JSONL_FORMATS, describe_sources())
