"""The bundle: an exported encoder as a directory of model.onnx, tokenizer and manifest.json.

The manifest describes everything the runtime needs (the head: pooling, dense layers
and normalization; prefixes, tokenizer, dimension, maximum length) so that nothing is
guessed from a model name,
and the sha256 of every file so that a damaged bundle is refused, not used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hbt.errors import BundleError
from hbt.pooling import ACTIVATIONS, POOLINGS
from hbt.tokenizer import TOKENIZER_KINDS, TokenizerSpec

FORMAT = "hbt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
# Prefixes what ``Manifest.fingerprint`` covers; indexes recorded before it carry a bare
# sha256 of model.onnx, which ``check_fingerprint`` recognizes to say "rebuild".
FINGERPRINT_SCHEME = "manifest-sha256:"
# Bounds on what a manifest may ask the runtime to allocate.
MAX_DIMENSION = 1 << 16
MAX_LENGTH = 1 << 16


@dataclass(frozen=True)
class DenseFile:
    """A dense layer after pooling, run in numpy: ``file`` holds weight [out, in] (and bias [out])."""

    file: str  # dense_0.npz
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of hbt.pooling.ACTIVATIONS

    def to_dict(self) -> dict:
        return asdict(self)


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
    include_prompt: bool = True  # False: the prefix's tokens are left out of pooling
    dense: tuple[DenseFile, ...] = ()
    files: dict = field(default_factory=dict)  # name -> sha256
    fidelity: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # how it was made: versions, optimizations

    @property
    def fingerprint(self) -> str:
        """Identifies what the vectors depend on: every file and every field the runtime reads.

        Two bundles share it only if they embed every text alike; an index records it to
        refuse a bundle that would give incomparable vectors.
        """
        canonical = json.dumps(self._runtime_fields() | {"files": self.files}, sort_keys=True, ensure_ascii=False)
        return FINGERPRINT_SCHEME + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def _runtime_fields(self) -> dict:
        fields = {
            "format_version": FORMAT_VERSION,
            "model": {"file": MODEL_FILE, "dimension": self.dimension, "max_length": self.max_length},
            "pooling": self.pooling, "normalize": self.normalize,
            "prefixes": {"query": self.query_prefix, "passage": self.passage_prefix},
            "tokenizer": self.tokenizer.to_dict(),
        }
        # Written only when they differ from what every earlier bundle did, so that earlier
        # manifests (and the index fingerprints recorded from them) read and compare as before.
        if not self.include_prompt:
            fields["include_prompt"] = False
        if self.dense:
            fields["dense"] = [layer.to_dict() for layer in self.dense]
        return fields

    def to_json(self) -> str:
        fields = self._runtime_fields()
        fields["model"]["opset"] = self.opset
        return json.dumps({
            "format": FORMAT, **fields,
            "source": {"name": self.source, "fingerprint": self.source_fingerprint},
            "quantization": self.quantization,
            "files": self.files, "fidelity": self.fidelity, "details": self.details,
        }, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: Path) -> "Manifest":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where}: not valid JSON ({e}); re-export the bundle with hbt-export") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise BundleError(f"{where}: not an hbt bundle manifest; point at a directory made by hbt-export")
        version = raw.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format version {version} is newer than this hbt reads "
                f"({FORMAT_VERSION}); upgrade hbt (pip install -U hbt)"
            )
        try:
            manifest = cls(
                source=raw["source"]["name"], source_fingerprint=raw["source"]["fingerprint"],
                dimension=raw["model"]["dimension"], max_length=raw["model"]["max_length"],
                opset=raw["model"]["opset"], quantization=raw["quantization"],
                tokenizer=TokenizerSpec(**raw["tokenizer"]),
                query_prefix=raw["prefixes"]["query"], passage_prefix=raw["prefixes"]["passage"],
                pooling=raw["pooling"], normalize=raw["normalize"], include_prompt=raw.get("include_prompt", True),
                dense=tuple(DenseFile(**layer) for layer in raw.get("dense", [])), files=raw["files"],
                fidelity=raw.get("fidelity", {}), details=raw.get("details", {}),
            )
        except (KeyError, TypeError) as e:
            raise BundleError(f"{where}: manifest lacks field {e}; re-export the bundle with hbt-export") from e
        manifest.validate(where)
        return manifest

    def validate(self, where: Path) -> None:
        """Refuse what a hostile or damaged manifest could make the runtime do.

        Files are plain names inside the bundle (no paths, no ``..``), the model and the
        tokenizer are among the checksummed files, and sizes are bounded before anything
        is allocated from them.
        """
        def refuse(problem: str):
            raise BundleError(f"{where}: {problem}; re-export the bundle with hbt-export")

        if not isinstance(self.files, dict) or not all(isinstance(v, str) for v in self.files.values()):
            refuse("'files' must map file names to sha256 digests")
        dense_files = [layer.file for layer in self.dense]
        for name in (*self.files, self.tokenizer.file, *dense_files):
            if not is_plain_file_name(name):
                refuse(f"file name {name!r} is not a plain file name inside the bundle")
        for name in (MODEL_FILE, self.tokenizer.file, *dense_files):
            if name not in self.files:
                refuse(f"{name} is not listed in 'files' with its sha256")
        for field_name, value, limit in (("dimension", self.dimension, MAX_DIMENSION),
                                         ("max_length", self.max_length, MAX_LENGTH)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
                refuse(f"model {field_name} {value!r} is not an integer in 1..{limit}")
        if self.max_length < 3:
            refuse(f"model max_length {self.max_length} leaves no room for a token between <s> and </s>")
        if self.pooling not in POOLINGS:
            refuse(f"pooling {self.pooling!r} is not one this hbt runs ({', '.join(POOLINGS)})")
        if not isinstance(self.normalize, bool) or not isinstance(self.include_prompt, bool):
            refuse("normalize and include_prompt must be true or false")
        width = None
        for layer in self.dense:
            sizes = (layer.in_features, layer.out_features)
            if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_DIMENSION for n in sizes):
                refuse(f"dense layer {layer.file} sizes {sizes} are not integers in 1..{MAX_DIMENSION}")
            if layer.activation not in ACTIVATIONS or not isinstance(layer.bias, bool):
                refuse(f"dense layer {layer.file}: activation {layer.activation!r} is not one of {', '.join(ACTIVATIONS)}")
            if width is not None and layer.in_features != width:
                refuse(f"dense layer {layer.file} takes {layer.in_features} values, the layer before gives {width}")
            width = layer.out_features
        if self.dense and width != self.dimension:
            refuse(f"the last dense layer gives {width} values, the dimension is {self.dimension}")
        if not isinstance(self.query_prefix, str) or not isinstance(self.passage_prefix, str):
            refuse("prefixes must be strings")
        if self.tokenizer.kind not in TOKENIZER_KINDS:
            refuse(f"tokenizer kind {self.tokenizer.kind!r} is not one this hbt runs ({', '.join(TOKENIZER_KINDS)})")
        ids = [self.tokenizer.id_offset, self.tokenizer.bos_id, self.tokenizer.pad_id, self.tokenizer.eos_id,
               self.tokenizer.unk_id]
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 20 for i in ids):
            refuse("tokenizer ids must be small non-negative integers")


def is_plain_file_name(name: object) -> bool:
    """A file name without directories: no separators, not absolute, not '.' or '..'."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and Path(name).name == name)


def check_fingerprint(recorded: str, manifest: Manifest, bundle_dir: Path, where: Path) -> None:
    """Refuse a bundle whose fingerprint differs from the one ``where`` (an index) recorded."""
    if recorded == manifest.fingerprint:
        return
    if not recorded.startswith(FINGERPRINT_SCHEME):
        raise BundleError(
            f"{where}: recorded by an older hbt, whose bundle fingerprint covered model.onnx only; "
            f"rebuild it with hbt-index build --bundle {bundle_dir}"
        )
    raise BundleError(
        f"{where}: built with another bundle than {bundle_dir} (different model, tokenizer or settings), "
        "whose vectors would not be comparable; use the bundle it was built with, or rebuild it"
    )


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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-export the bundle with hbt-export") from e
    manifest = Manifest.from_json(text, path)
    if verify:
        # Every file the runtime may read is checksummed: an unlisted one (an ONNX external-data file, say)
        # would change the vectors while the fingerprint stayed the same.
        unlisted = sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name not in manifest.files
                          and p.name != MANIFEST)
        if unlisted:
            raise BundleError(f"{bundle_dir / unlisted[0]}: in the bundle but not in its manifest, so never checksummed; "
                              "remove it, or re-export the bundle with hbt-export")
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
