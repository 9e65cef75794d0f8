"""Tatoeba bitext retrieval (LASER's test set): find each sentence's translation among the other side's.

For a language xx, line i of ``tatoeba.xx-eng.xx`` translates line i of
``tatoeba.xx-eng.eng``. Direction ``xx-en`` ranks all of the pair's English
sentences for each xx sentence (``en-xx`` the reverse); the one relevant candidate
is the aligned line, ties broken by line (as LASER compares indices). Per
language: P@1, mAP (with one relevant candidate, the mean reciprocal rank) and the
error rate of Artetxe and Schwenk (2019), 1 − P@1, averaged over both directions.
It is a test set: never train or tune on it.

Languages are grouped by how much of them multilingual-e5's pre-training likely
saw: ``cc100`` for the 100 languages of CC-100, the corpus of XLM-R from which mE5
starts (its own multilingual data, mC4, Wikipedia and NLLB among others, is not
listed per language), ``other`` for the rest: dialects, historical and constructed
languages and low-resource languages outside CC-100.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from hbt.errors import DataError

DIRECTIONS = ("xx-en", "en-xx")
# Tatoeba's ISO 639-3 codes of XLM-R's CC-100 languages (Conneau et al., 2020, table 6); zsm is Malay,
# pes Persian, lvs Latvian, nob and nno Norwegian, cmn Chinese.
CC100 = frozenset(
    "afr amh ara aze bel ben bos bre bul cat ces cmn cym dan deu ell epo est eus fin fra fry gla gle glg heb hin hrv "
    "hun hye ind isl ita jav jpn kat kaz khm kor kur lat lit lvs mal mar mkd mon nld nno nob pes pol por ron rus slk "
    "slv sqi srp spa swe swh tam tel tgl tha tur uig ukr urd uzb vie xho yid zsm".split())


def group(lang: str) -> str:
    return "cc100" if lang in CC100 else "other"


def languages(folder: Path) -> list[str]:
    """The languages with both files of a pair in ``folder``, sorted."""
    found = sorted(f.name.split(".")[1].split("-")[0] for f in Path(folder).glob("tatoeba.*-eng.eng.gz"))
    return [lang for lang in found if (Path(folder) / f"tatoeba.{lang}-eng.{lang}.gz").exists()]


def read_pair(folder: Path, lang: str) -> tuple[list[str], list[str]]:
    """(xx sentences, English sentences), line-aligned; a missing, unreadable or misaligned pair is a DataError."""
    sides = []
    for side in (lang, "eng"):
        path = Path(folder) / f"tatoeba.{lang}-eng.{side}.gz"
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                sides.append([line.rstrip("\n") for line in handle])
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not readable as gzipped UTF-8 text ({e}); "
                            f"Tatoeba's files are tatoeba.<iso3>-eng.{{<iso3>,eng}}.gz") from e
    if len(sides[0]) != len(sides[1]) or not sides[0]:
        raise DataError(f"{folder}: tatoeba.{lang}-eng has {len(sides[0])} {lang} and {len(sides[1])} English lines; "
                        "the two files must be line-aligned and not empty")
    return sides[0], sides[1]


def aligned_ranks(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of target[i] among all targets for source[i] (dot product; ties: lower line first). [N]"""
    scores = source @ target.T  # [N, N]
    gold = np.diag(scores)[:, None]  # [N, 1]
    before = np.arange(len(scores))[None, :] < np.arange(len(scores))[:, None]  # [N, N]: line j before line i
    return 1 + np.count_nonzero(scores > gold, axis=1) + np.count_nonzero((scores == gold) & before, axis=1)


def _summary(ranks: np.ndarray) -> dict:
    p1 = float(np.mean(ranks == 1))
    return {"map": float(np.mean(1.0 / ranks)), "p@1": p1, "error": 1.0 - p1}


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate(data_dir: Path, encode: Callable[[list[str]], np.ndarray], langs: list[str] | None = None,
             progress: Callable[[str], None] = lambda s: None, per_question: dict | None = None) -> dict:
    """Every language's pair, both directions, and their mean ("laser": the average of the two directions).

    ``encode`` embeds both sides alike (L2-normalized; for E5, the ``query: `` prefix of
    symmetric tasks). ``per_question`` receives each group's (ids, ranks), keyed
    ``xx-en/afr``, ``en-xx/afr``, ids ``afr:LINE``: for paired tests between models.
    Results are macro-averaged over languages, overall and per group (cc100, other).
    """
    folder = Path(data_dir) / "tatoeba"
    available = languages(folder)
    if not available:
        raise DataError(f"{folder}: no Tatoeba pairs (tatoeba.<iso3>-eng.{{<iso3>,eng}}.gz); point --data-dir at "
                        "the folder holding tatoeba/")
    missing = sorted(set(langs or ()) - set(available))
    if missing:
        raise DataError(f"{folder}: missing languages {', '.join(missing)}")
    per: dict[str, dict[str, dict]] = {d: {} for d in (*DIRECTIONS, "laser")}
    for lang in langs or available:
        progress(f"embedding {lang}")
        sentences, english = read_pair(folder, lang)
        vectors, english_vectors = encode(sentences), encode(english)
        ids = [f"{lang}:{i}" for i in range(len(sentences))]
        for direction, (source, target) in zip(DIRECTIONS, ((vectors, english_vectors), (english_vectors, vectors))):
            ranks = aligned_ranks(source, target)
            per[direction][lang] = _summary(ranks)
            if per_question is not None:
                per_question[f"{direction}/{lang}"] = (ids, [np.array([r]) for r in ranks])
        per["laser"][lang] = _mean([per[d][lang] for d in DIRECTIONS])
    results = {}
    for direction, rows in per.items():
        groups = {g: _mean([v for lang, v in rows.items() if group(lang) == g])
                  for g in ("cc100", "other") if any(group(lang) == g for lang in rows)}
        results[direction] = {"mean": _mean(list(rows.values())) | {"groups": len(rows)}, "per_language": rows,
                              "per_group": groups}
    return results


def markdown_groups(results: dict) -> list[str]:
    """The per-group table (macro means over each group's languages) for a report."""
    lines = ["", "## Language groups (cc100: in XLM-R's CC-100; other: not)", "",
             "| direction | group | languages | mAP | P@1 | error |", "|---|---|---|---|---|---|"]
    for direction, values in results.items():
        for name, numbers in values["per_group"].items():
            count = sum(group(lang) == name for lang in values["per_language"])
            lines.append(f"| {direction} | {name} | {count} | {numbers['map']:.3f} | {numbers['p@1']:.3f} | "
                         f"{numbers['error']:.3f} |")
    return lines
