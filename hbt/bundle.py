"""The bundle: an exported encoder as a directory of model.onnx, tokenizer and manifest.json.

The manifest describes everything the runtime needs (pooling, prefixes, tokenizer
layout, dimension, maximum length) so that nothing is guessed from a model name,
and the sha256 of every file so that a damaged bundle is refused, not used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from hbt.errors import BundleError
from hbt.tokenizer import TokenizerSpec

FORMAT = "hbt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class Manifest:
    source: str
    source_fingerprint: str
    dimension: int
    max_length: int
    opset: int
    quantization: str  # "int8" or "none"
    tokenizer: TokenizerSpec
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    pooling: str = "mean"
    normalize: bool = True
    files: dict = field(default_factory=dict)  # name -> sha256
    fidelity: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # how it was made: versions, optimizations

    @property
    def fingerprint(self) -> str:
        """Identifies the exported model: the sha256 of model.onnx."""
        return self.files.get(MODEL_FILE, "")

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "source": {"name": self.source, "fingerprint": self.source_fingerprint},
            "model": {"file": MODEL_FILE, "dimension": self.dimension,
                      "max_length": self.max_length, "opset": self.opset},
            "pooling": self.pooling, "normalize": self.normalize,
            "prefixes": {"query": self.query_prefix, "passage": self.passage_prefix},
            "tokenizer": self.tokenizer.to_dict(),
            "quantization": self.quantization,
            "files": self.files, "fidelity": self.fidelity, "details": self.details,
        }, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: Path) -> "Manifest":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where}: not valid JSON ({e}); re-export the bundle with hbt-export") from e
        if raw.get("format") != FORMAT:
            raise BundleError(f"{where}: not an hbt bundle manifest; point at a directory made by hbt-export")
        version = raw.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format version {version} is newer than this hbt reads "
                f"({FORMAT_VERSION}); upgrade hbt (pip install -U hbt)"
            )
        try:
            return cls(
                source=raw["source"]["name"], source_fingerprint=raw["source"]["fingerprint"],
                dimension=raw["model"]["dimension"], max_length=raw["model"]["max_length"],
                opset=raw["model"]["opset"], quantization=raw["quantization"],
                tokenizer=TokenizerSpec(**raw["tokenizer"]),
                query_prefix=raw["prefixes"]["query"], passage_prefix=raw["prefixes"]["passage"],
                pooling=raw["pooling"], normalize=raw["normalize"], files=raw["files"],
                fidelity=raw.get("fidelity", {}), details=raw.get("details", {}),
            )
        except (KeyError, TypeError) as e:
            raise BundleError(f"{where}: manifest lacks field {e}; re-export the bundle with hbt-export") from e


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path | str, verify: bool = True) -> Manifest:
    """Read a bundle's manifest; with ``verify``, check every file against its sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST}; is this a bundle? Make one with hbt-export")
    manifest = Manifest.from_json(path.read_text(encoding="utf-8"), path)
    if verify:
        for name, expected in manifest.files.items():
            file = bundle_dir / name
            if not file.is_file():
                raise BundleError(f"{bundle_dir}: {name} is missing; re-export the bundle with hbt-export")
            if sha256_file(file) != expected:
                raise BundleError(
                    f"{file}: checksum mismatch (the file is damaged or was changed); "
                    "re-export the bundle with hbt-export"
                )
    return manifest
