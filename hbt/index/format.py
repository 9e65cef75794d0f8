"""The on-disk format: the commit manifest, segment entries, and the rules a manifest must obey.

An index directory holds::

    manifest.json            the commit point: generation, settings, the live segments
    write.lock               taken by writers only
    seg-000003/graph.hnsw    HNSW graph (hnswlib), labels 0 .. count-1
    seg-000003/docs.sqlite   documents keyed by label
    seg-000003/langs.npy     each label's language, as a code into the entry's ``language_codes``
    seg-000003/deletes-000009.npy   tombstones: sorted deleted labels, as of generation 9

Segment files never change once written; deletes write a new tombstone file. The
manifest is written last, by one rename, so an index is always exactly one commit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from hbt.corpus import Document
from hbt.errors import SearchIndexError

FORMAT = "hbt-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
GRAPH_FILE = "graph.hnsw"
DOCS_FILE = "docs.sqlite"
LANGS_FILE = "langs.npy"
SPACE = "ip"  # inner product on unit vectors; hnswlib returns the distance 1 - dot
SEGMENT_NAME = re.compile(r"seg-\d{6}")
TOMBSTONE_NAME = re.compile(r"deletes-\d{6}\.npy")
SEGMENT_FILES = (GRAPH_FILE, DOCS_FILE, LANGS_FILE)
FORMAT_1_FILES = ("hnsw.bin", "docs.sqlite")  # one graph and one store for the whole index


@dataclass(frozen=True)
class IndexConfig:
    M: int = 32
    ef_construction: int = 200
    ef: int = 128
    threads: int = 0  # 0: all cores
    segment_size: int = 1_000_000  # documents per segment written by build, add and compact


def passage_text(doc: Document) -> str:
    return f"{doc.title} {doc.text}" if doc.title else doc.text


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def tombstone_name(generation: int) -> str:
    return f"deletes-{generation:06d}.npy"


def live_count(entry: dict) -> int:
    return entry["count"] - entry["deleted"]


def read_manifest(directory: Path) -> dict:
    """The index's current commit, checked against the format's rules."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise SearchIndexError(f"{directory}: no index here ({MANIFEST} missing); build one with hbt-index build")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SearchIndexError(f"{path}: corrupted ({e}); restore it from a backup or rebuild the index") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SearchIndexError(f"{path}: not an hbt index manifest")
    version = manifest.get("format_version")
    if version == 1:
        raise SearchIndexError(f"{directory}: index format 1; convert it in place with: hbt-index upgrade {directory}")
    if version != FORMAT_VERSION:
        raise SearchIndexError(f"{path}: index format {version} is not one this hbt reads ({FORMAT_VERSION}); "
                               "upgrade hbt")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: dict, path: Path) -> None:
    """Refuse a manifest whose fields would make the reader open other files or allocate without bound."""
    try:
        if not isinstance(manifest["dimension"], int) or not 0 < manifest["dimension"] <= 65536:
            raise ValueError(f"dimension {manifest['dimension']!r} out of range")
        for entry in manifest["segments"]:
            if not SEGMENT_NAME.fullmatch(entry["name"]):
                raise ValueError(f"segment name {entry['name']!r} is not seg-NNNNNN")
            if set(entry["files"]) != set(SEGMENT_FILES) | ({entry["tombstones"]} if entry["tombstones"] else set()):
                raise ValueError(f"segment {entry['name']} lists files {sorted(entry['files'])}")
            if entry["tombstones"] and not TOMBSTONE_NAME.fullmatch(entry["tombstones"]):
                raise ValueError(f"tombstone file {entry['tombstones']!r} is not deletes-NNNNNN.npy")
            if not 0 <= entry["deleted"] <= entry["count"] or sum(entry["languages"].values()) != live_count(entry):
                raise ValueError(f"segment {entry['name']} counts disagree")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SearchIndexError(f"{path}: invalid manifest ({e}); restore it from a backup or rebuild the index") from e


def dump_manifest(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
