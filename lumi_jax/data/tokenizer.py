"""The tokenizer: SentencePiece BPE, lossless, with the llama2.c special ids.

Settings chosen so that `decode(encode(text)) == text` for every string:
- identity normalisation (no NFKC, no case folding), no dummy prefix, whitespace kept as is;
- byte fallback, so a character never seen in training becomes its UTF-8 bytes instead of <unk>;
- digits split one by one, which helps arithmetic and keeps numbers from eating the vocabulary.
Ids: unk 0, bos 1, eos 2; no padding id (the loader pads with weight 0 instead).

SentencePiece trains on lines, so no learned piece spans a newline; a newline is the byte
piece <0x0A>. The trained model is one file, `tokenizer.model`, identified by its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from lumi_jax.data.template import TEMPLATE_MARKERS
from lumi_jax.errors import UserError

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2

# SentencePiece skips training lines longer than this many bytes; longer lines are cut first.
TRAINING_LINE_BYTES = 4096
# Training reads at most this many characters (sampled by line, deterministically): BPE merges
# settle long before that, and tokenizer training time stays bounded on big corpora.
TRAINING_MAX_CHARS = 200_000_000


def encode_threads() -> int:
    return max(1, os.cpu_count() or 1)


class Tokenizer:
    """A loaded SentencePiece model plus the facts other stages check against."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path, sha256: str):
        self._processor = processor
        self.path = Path(path)
        self.sha256 = sha256
        self.vocab_size = int(processor.get_piece_size())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such tokenizer model file; give the path of a tokenizer.model "
                            "(every prepared dataset has one: data/NAME/tokenizer.model)")
        model_bytes = path.read_bytes()
        processor = spm.SentencePieceProcessor()
        try:
            processor.load_from_serialized_proto(model_bytes)
        except (RuntimeError, OSError) as error:
            raise UserError(f"{path}: not a SentencePiece model ({_first_line(error)}); "
                            "give a tokenizer.model written by `lumi prepare`") from None
        ids = (processor.unk_id(), processor.bos_id(), processor.eos_id())
        if ids != (UNK_ID, BOS_ID, EOS_ID):
            raise UserError(f"{path}: special ids (unk, bos, eos) are {ids}, lumi_jax needs "
                            f"({UNK_ID}, {BOS_ID}, {EOS_ID}); use a tokenizer trained by `lumi prepare`")
        return cls(processor, path, hashlib.sha256(model_bytes).hexdigest())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._processor.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts on all cores (SentencePiece's own C++ threads)."""
        if not texts:
            return []
        return self._processor.encode(list(texts), add_bos=bos, add_eos=eos,
                                      num_threads=num_threads or encode_threads())

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _training_lines(texts: Iterable[str], seed: int) -> list[str]:
    """Non-empty lines, long ones cut to SentencePiece's limit, sampled if the corpus is huge."""
    lines: list[str] = []
    total_chars = 0
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            while len(line.encode("utf-8")) > TRAINING_LINE_BYTES:
                cut = TRAINING_LINE_BYTES // 4  # at most 4 bytes per character: always under the limit
                space = line.rfind(" ", 0, cut)
                cut = space + 1 if space > 0 else cut
                lines.append(line[:cut])
                total_chars += cut
                line = line[cut:]
            lines.append(line)
            total_chars += len(line)
    if total_chars > TRAINING_MAX_CHARS:
        import numpy as np

        keep = TRAINING_MAX_CHARS / total_chars
        chosen = np.random.default_rng(seed).random(len(lines)) < keep
        lines = [line for line, take in zip(lines, chosen, strict=True) if take]
    return lines


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str | Path, seed: int = 0) -> Tokenizer:
    """Train a BPE tokenizer on `texts` and write it to `out_path` (a .model file)."""
    out_path = Path(out_path)
    lines = _training_lines(texts, seed)
    if not lines:
        raise UserError("the corpus has no text to train a tokenizer on; give a source with some text")
    spm.set_random_generator_seed(seed)
    model = _train_bytes(lines, vocab_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model)
    return Tokenizer.load(out_path)


def _train_bytes(lines: list[str], vocab_size: int) -> bytes:
    import io


    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=list(TEMPLATE_MARKERS),  # the instruction template's headers: one piece each
            character_coverage=0.9995,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            input_sentence_size=0,
            max_sentence_length=TRAINING_LINE_BYTES,
            num_threads=encode_threads(),
            minloglevel=2,
        )
    except RuntimeError as error:
        message = str(error)
        too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
        if too_high:
            raise UserError(f"vocab size {vocab_size} is too large for this corpus: the largest that works "
                            f"is {too_high.group(2)}; pass --vocab-size {too_high.group(2)} or less "
                            "(BPE pieces stay inside words: more varied text allows more)") from None
        too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
        if too_small:
            raise UserError(f"vocab size {vocab_size} is too small for this corpus: it needs at least "
                            f"{too_small.group(2)} (256 byte pieces, 3 special ids, the 4 template markers and the common "
                            f"characters); pass --vocab-size {too_small.group(2)} or more") from None
        raise
    return model.getvalue()
