"""A stand-in encoder for index tests: deterministic unit vectors from the text, no model."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np


class HashEncoder:
    """Each text's vector is seeded by its CRC-32, so equal texts embed equally, in any process."""

    def __init__(self, dimension: int = 16, fingerprint: str = "hash-encoder"):
        self.dimension = dimension
        self.bundle_dir = Path("hash-encoder")
        self.manifest = SimpleNamespace(fingerprint=fingerprint)
        self.truncated = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.array([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dimension)
                            for t in texts], dtype=np.float32).reshape(len(texts), self.dimension)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    encode_passages = encode_queries = encode
