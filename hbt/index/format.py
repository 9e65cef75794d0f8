"""The on-disk format: the commit manifest, segment entries, and the rules a manifest must obey.

An index directory holds::

    manifest.json            the commit point: generation, settings, the live segments
    write.lock               taken by writers only
    seg-000003/graph.hnsw    HNSW graph (hnswlib), labels 0 .. count-1
    seg-000003/docs.sqlite   documents keyed by label
    seg-000003/langs.npy     each label's language, as a code into the entry's ``language_codes``
    seg-000003/lexical.bin   BM25 postings over the tokenizer's pieces (``hbt.index.lexical``); absent in older indexes
    seg-000003/deletes-000009.npy   tombstones: sorted deleted labels, as of generation 9
    seg-000003/lang-00002.hnsw   optional: a graph of one language's vectors (code 2), ``hbt.index.language_graphs``

Segment files never change once written; deletes write a new tombstone file. The
manifest is written last, by one rename, so an index is always exactly one commit.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
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
LEXICAL_FILE = "lexical.bin"  # optional: segments written before lexical search lack it until hbt-index upgrade
LANGUAGE_GRAPH_NAME = re.compile(r"lang-(\d{5})\.hnsw")  # lang-NNNNN.hnsw: NNNNN the language's code
LANGUAGE_GRAPH_MODES = ("auto", "off")
FORMAT_1_FILES = ("hnsw.bin", "docs.sqlite")  # one graph and one store for the whole index


@dataclass(frozen=True)
class IndexConfig:
    M: int = 32
    ef_construction: int = 200
    ef: int = 128
    threads: int = 0  # 0: all cores
    segment_size: int = 1_000_000  # documents per segment written by build, add and compact
    language_graphs: str = "auto"  # "off": no per-language graphs (hbt.index.language_graphs)


def passage_text(doc: Document) -> str:
    return f"{doc.title} {doc.text}" if doc.title else doc.text


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def tombstone_name(generation: int) -> str:
    return f"deletes-{generation:06d}.npy"


def language_graph_name(code: int) -> str:
    return f"lang-{code:05d}.hnsw"


@dataclass(frozen=True)
class FileRecord:
    """A segment file's checksum and size, as the commit records them."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class SegmentEntry:
    """One segment as a commit lists it: its documents, tombstones, languages and files."""

    name: str
    count: int  # labels 0 .. count-1, deleted ones included
    deleted: int
    tombstones: str | None  # the tombstone file, or None before the first delete
    language_codes: tuple[str, ...]  # langs.npy holds indices into these
    languages: dict[str, int]  # live documents per language
    files: dict[str, FileRecord]

    @property
    def live(self) -> int:
        return self.count - self.deleted

    @property
    def graph_bytes(self) -> int:
        """The size of the graph files (language graphs included): about the memory the segment takes when open."""
        return self.files[GRAPH_FILE].bytes + self.language_graph_bytes

    @property
    def language_graph_bytes(self) -> int:
        return sum(self.files[name].bytes for name in self.language_graphs.values())

    @property
    def language_graphs(self) -> dict[str, str]:
        """The segment's language graphs: language -> file name."""
        return {self.language_codes[int(match[1])]: name for name in self.files
                if (match := LANGUAGE_GRAPH_NAME.fullmatch(name))}

    @classmethod
    def from_json(cls, record: dict, where: str = "segment") -> "SegmentEntry":
        """An entry from its JSON object; one that breaks the format's rules raises ValueError."""
        _check_entry(record, where)
        return cls(record["name"], record["count"], record["deleted"], record["tombstones"],
                   tuple(record["language_codes"]), dict(record["languages"]),
                   {name: FileRecord(**file) for name, file in record["files"].items()})

    def to_json(self) -> dict:
        return asdict(self) | {"language_codes": list(self.language_codes)}


@dataclass(frozen=True)
class IndexBundle:
    """The bundle an index was built with: searches and updates with another are refused."""

    path: str
    fingerprint: str


@dataclass(frozen=True)
class Manifest:
    """A commit: its generation, the index's settings and the live segments (``manifest.json``)."""

    generation: int
    hbt_version: str
    bundle: IndexBundle
    dimension: int
    M: int
    ef_construction: int
    ef: int
    segment_size: int
    next_segment: int  # above every segment number used, so a name is never reused
    segments: tuple[SegmentEntry, ...]
    count: int  # live documents
    languages: dict[str, int]  # live documents per language
    created: str
    updated: str
    language_graphs: str = "auto"  # what new segments build; absent from manifests written before it

    @property
    def config(self) -> IndexConfig:
        return IndexConfig(M=self.M, ef_construction=self.ef_construction, ef=self.ef,
                           segment_size=self.segment_size, language_graphs=self.language_graphs)

    @classmethod
    def from_json(cls, record: dict, path: Path) -> "Manifest":
        """A commit from its JSON object; one that breaks the format's rules is refused in one line."""
        _check_manifest(record, path)
        fields = {name: record[name] for name in MANIFEST_FIELDS if name not in ("bundle", "segments", "space")}
        return cls(**fields, bundle=IndexBundle(**{name: record["bundle"][name] for name in BUNDLE_FIELDS}),
                   segments=tuple(SegmentEntry.from_json(e) for e in record["segments"]),
                   language_graphs=record.get("language_graphs", "auto"))

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "space": SPACE} | {
            name: getattr(self, name) for name in MANIFEST_FIELDS if name not in ("bundle", "segments", "space")} | {
            "bundle": asdict(self.bundle), "segments": [entry.to_json() for entry in self.segments],
            "language_graphs": self.language_graphs}


def live_count(entry: dict) -> int:
    """Live documents of an entry's JSON object (before it is a SegmentEntry)."""
    return entry["count"] - entry["deleted"]


def read_manifest(directory: Path) -> Manifest:
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
    return Manifest.from_json(manifest, path)


# Every field a reader or writer reads, with its type: a manifest lacking one is refused at open, in one line.
MANIFEST_FIELDS = {"generation": int, "hbt_version": str, "bundle": dict, "dimension": int, "space": str, "M": int,
                   "ef_construction": int, "ef": int, "segment_size": int, "next_segment": int, "segments": list,
                   "count": int, "languages": dict, "created": str, "updated": str}
BUNDLE_FIELDS = {"path": str, "fingerprint": str}
ENTRY_FIELDS = {"name": str, "count": int, "deleted": int, "tombstones": (str, type(None)), "language_codes": list,
                "languages": dict, "files": dict}
FILE_FIELDS = {"sha256": str, "bytes": int}
MAX_LANGUAGES = 1 << 16  # language codes are uint16


def _fields(record, fields: dict, where: str) -> None:
    """``record`` is an object holding ``fields`` of their types; integers are never negative (nor bools)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} is not an object")
    unknown = set(record) - set(fields) - {"format", "format_version"}
    if unknown:  # a newer hbt's: rewriting the commit would drop them
        raise ValueError(f"{where} holds fields this hbt does not know: {sorted(unknown)}")
    for key, kind in fields.items():
        if key not in record:
            raise ValueError(f"{where}.{key} missing")
        value = record[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            expected = {int: "a non-negative integer", str: "a string", dict: "an object", list: "a list"}.get(
                kind, "a string or null")
            raise ValueError(f"{where}.{key} = {str(value)[:40]!r} is not {expected}")


def _counts(languages, where: str) -> dict[str, int]:
    if not all(isinstance(lang, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
               for lang, n in languages.items()):
        raise ValueError(f"{where}.languages is not a map of languages to counts")
    return languages


def _check_manifest(manifest: dict, path: Path) -> None:
    """Refuse a manifest that lacks a field, or whose fields would make the reader open other files,
    allocate without bound or disagree with themselves."""
    try:
        if manifest.get("language_graphs", "auto") not in LANGUAGE_GRAPH_MODES:
            raise ValueError(f"language_graphs is not one of {LANGUAGE_GRAPH_MODES}")
        _fields({name: value for name, value in manifest.items() if name != "language_graphs"}, MANIFEST_FIELDS,
                "manifest")
        _fields(manifest["bundle"], BUNDLE_FIELDS, "manifest.bundle")
        if not 0 < manifest["dimension"] <= 65536:
            raise ValueError(f"dimension {manifest['dimension']!r} out of range")
        if manifest["space"] != SPACE or min(manifest["M"], manifest["ef_construction"], manifest["ef"],
                                             manifest["segment_size"]) < 1:
            raise ValueError("space, M, ef_construction, ef or segment_size out of range")
        languages: dict[str, int] = {}
        numbers = []
        for position, entry in enumerate(manifest["segments"]):
            _check_entry(entry, f"segments[{position}]")
            numbers.append(int(entry["name"].removeprefix("seg-")))
            for lang, n in entry["languages"].items():
                languages[lang] = languages.get(lang, 0) + n
        if len(set(numbers)) != len(numbers) or manifest["next_segment"] <= max(numbers, default=-1):
            raise ValueError("segment names repeat, or next_segment is not above them")
        stated = _counts(manifest["languages"], "manifest")
        if manifest["count"] != sum(live_count(e) for e in manifest["segments"]) or (
                {lang: n for lang, n in stated.items() if n} != {lang: n for lang, n in languages.items() if n}):
            raise ValueError("count or languages disagree with the segments")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SearchIndexError(f"{path}: invalid manifest ({e}); restore it from a backup or rebuild the index") from e


def _check_entry(entry: dict, where: str) -> None:
    _fields(entry, ENTRY_FIELDS, where)
    if not SEGMENT_NAME.fullmatch(entry["name"]):
        raise ValueError(f"segment name {entry['name']!r} is not seg-NNNNNN")
    if entry["tombstones"] is not None and not TOMBSTONE_NAME.fullmatch(entry["tombstones"]):
        raise ValueError(f"tombstone file {entry['tombstones']!r} is not deletes-NNNNNN.npy")
    graphs = {name for name in entry["files"] if (match := LANGUAGE_GRAPH_NAME.fullmatch(name))
              and int(match[1]) < len(entry["language_codes"])}
    tombstones = {entry["tombstones"]} if entry["tombstones"] else set()
    if set(entry["files"]) - {LEXICAL_FILE} - graphs != set(SEGMENT_FILES) | tombstones:
        raise ValueError(f"segment {entry['name']} lists files {sorted(entry['files'])}")
    for name, record in entry["files"].items():
        _fields(record, FILE_FIELDS, f"{where}.files.{name}")
    codes = entry["language_codes"]
    if len(codes) > MAX_LANGUAGES or len(set(codes)) != len(codes) or not all(isinstance(c, str) for c in codes):
        raise ValueError(f"{where}.language_codes is not a list of distinct languages")
    languages = _counts(entry["languages"], where)
    if not 0 <= entry["deleted"] <= entry["count"] or sum(languages.values()) != live_count(entry) or (
            not set(languages) <= set(codes)):
        raise ValueError(f"segment {entry['name']} counts disagree")


def dump_manifest(manifest: Manifest) -> bytes:
    return json.dumps(manifest.to_json(), indent=1, ensure_ascii=False).encode("utf-8")
