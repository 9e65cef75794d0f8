"""A stand-in encoder with a real tokenizer: ``HashEncoder``'s vectors, a tiny SentencePiece model's pieces.

Index tests build with it so that every segment carries its lexical part. The model is
trained once per machine (deterministically) and kept in the temporary directory, so
that the crash tests' subprocesses share it.
"""

from __future__ import annotations

import functools
import os
import tempfile
import zlib
from pathlib import Path

from hbt.tokenizer import Tokenizer
from tests.conftest import MULTILINGUAL, write_tiny_tokenizer
from tests.fakes import HashEncoder

# Pieces for the index tests' own words too ("text", "fresh", "alpha", numbers), beside every script.
TEXTS = MULTILINGUAL + [f"text {i} of d, title {i % 5}; fresh text {i}, alpha beta gamma" for i in range(40)]


@functools.cache
def tiny_tokenizer() -> Tokenizer:
    digest = zlib.crc32("\n".join(TEXTS).encode())  # another TEXTS, another model
    path = Path(tempfile.gettempdir()) / f"hbt-test-pieces-{os.getuid()}-{digest:08x}.model"
    if not path.is_file():
        temporary = path.with_name(f"{path.name}.{os.getpid()}")
        write_tiny_tokenizer(temporary, TEXTS)
        temporary.replace(path)  # whole, for processes that race to write it
    return Tokenizer(path)


class PieceEncoder(HashEncoder):
    """``HashEncoder`` with a tokenizer, as the real ``Encoder`` has: its indexes hold lexical parts."""

    def __init__(self, dimension: int = 16, fingerprint: str = "hash-encoder"):
        super().__init__(dimension, fingerprint)
        self.tokenizer = tiny_tokenizer()
