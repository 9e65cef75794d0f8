"""Tokenization with the id layout of the model: SentencePiece or WordPiece (no torch, no transformers, no Rust)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from hbt.errors import BundleError

TOKENIZER_KINDS = ("sentencepiece", "wordpiece")


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer, and how its ids map onto model ids; XLM-R's SentencePiece layout by default.

    XLM-R models number <s>, <pad>, </s>, <unk> 0-3 and every SentencePiece piece
    one above its SentencePiece id (the "fairseq offset"). WordPiece ids are the
    vocab.txt line numbers (``id_offset`` 0), with [CLS], [PAD], [SEP] and [UNK] as
    bos, pad, eos and unk, and the basic tokenization the model was trained with.
    """

    file: str = "sentencepiece.bpe.model"
    id_offset: int = 1
    bos_id: int = 0
    pad_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    kind: str = "sentencepiece"
    lowercase: bool = False  # wordpiece only, as are the two below
    strip_accents: bool = False
    split_chinese: bool = True

    def to_dict(self) -> dict:
        """The manifest's form. A SentencePiece spec leaves out the WordPiece fields, so bundles and
        the index fingerprints recorded before WordPiece existed read and compare as they did."""
        if self.kind == "sentencepiece":
            return {f.name: getattr(self, f.name) for f in fields(self)[:6]}
        return asdict(self)


class Tokenizer:
    """Turns texts into model ids: bos pieces eos, truncated to a maximum length."""

    def __init__(self, model_file: Path | str, spec: TokenizerSpec = TokenizerSpec()):
        self.spec = spec
        if spec.kind == "sentencepiece":
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=str(model_file))
            spm_unk = processor.unk_id()

            def to_ids(texts: list[str]) -> list[np.ndarray]:
                # One thread: sentencepiece's default pool costs ~2 ms per call to start, more than
                # tokenizing a query; batches tokenize at the same ~7 us per text either way.
                raw = [np.asarray(pieces, dtype=np.int64) for pieces in processor.encode(texts, num_threads=1)]
                return [np.where(r == spm_unk, spec.unk_id, r + spec.id_offset) for r in raw]
        elif spec.kind == "wordpiece":
            from hbt.wordpiece import WordPiece

            wordpiece = WordPiece(model_file, spec.lowercase, spec.strip_accents, spec.split_chinese)
            if wordpiece.unk_id != spec.unk_id:
                raise BundleError(f"{model_file}: [UNK] is id {wordpiece.unk_id}, the spec says {spec.unk_id}; "
                                  "re-export the bundle with hbt-export")

            def to_ids(texts: list[str]) -> list[np.ndarray]:
                return [np.asarray(wordpiece.encode(t), dtype=np.int64) + spec.id_offset for t in texts]
        else:
            raise BundleError(f"tokenizer kind {spec.kind!r}: this hbt runs {' or '.join(TOKENIZER_KINDS)}; "
                              "upgrade hbt or re-export the bundle")
        self._to_ids = to_ids

    def encode(self, texts: list[str], max_length: int | None) -> tuple[list[np.ndarray], int]:
        """Model ids per text, and how many texts were cut to ``max_length`` (None: none are cut)."""
        spec = self.spec
        content = max_length - 2 if max_length is not None else float("inf")  # room for bos and eos
        ids, truncated = [], 0
        for mapped in self._to_ids(list(texts)):
            if len(mapped) > content:
                mapped, truncated = mapped[:content], truncated + 1
            ids.append(np.concatenate(([spec.bos_id], mapped, [spec.eos_id])).astype(np.int64))
        return ids, truncated

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt occupies at the start of every text it prefixes: bos and its pieces.

        sentence-transformers counts it the same way (the prompt tokenized alone, less
        the trailing eos) to leave the prompt out of pooling (``include_prompt: false``).
        """
        return len(self._to_ids([prompt])[0]) + 1 if prompt else 0  # no prompt, nothing left out
