"""Training data: parallel question-passage records, from the parallel QA or the plain pair format."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hbt.corpus import open_text
from hbt.errors import DataError


@dataclass
class Record:
    """One question id: its question and passage in each language it exists in."""

    id: str
    questions: dict[str, str] = field(default_factory=dict)
    passages: dict[str, str] = field(default_factory=dict)
    negatives: dict[str, list[str]] = field(default_factory=dict)  # passage language -> hard negatives

    def mono_languages(self) -> list[str]:
        return sorted(set(self.questions) & set(self.passages))

    def cross_pairs(self) -> list[tuple[str, str]]:
        return [(q, p) for q in sorted(self.questions) for p in sorted(self.passages) if q != p]


PASSAGE_UNITS = ("paragraph", "sentence")
# A sentence ends at . ! ? followed by space, or right after a CJK full stop (no space follows one).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def answer_sentences(context: str, answers: list[str]) -> tuple[str, str | None] | None:
    """The first sentence of ``context`` that holds an answer, and the sentence next to it.

    The neighbour (the following sentence, else the preceding one, never a copy of the
    answer's; None in a one-sentence paragraph) is the hardest negative there is for
    LAReQA, which ranks a paragraph's sentences against each other. None when no sentence
    holds an answer (one spanning sentences). The parallel set keeps answer strings
    without offsets, so a string that occurs in two sentences picks the first: a small,
    uniform noise on every batching.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(context) if s.strip()]
    found = next((i for answer in answers if answer for i, s in enumerate(sentences) if answer in s), None)
    if found is None:
        return None
    sentence = sentences[found]
    neighbours = [sentences[i] for i in (found + 1, found - 1) if 0 <= i < len(sentences) and sentences[i] != sentence]
    return sentence, next(iter(neighbours), None)


def load_records(path: Path | str, languages: list[str] | None = None, passage_unit: str = "paragraph") -> list[Record]:
    """Read a parallel QA file (rows with "langs") or plain pairs (query, passage, query_lang, passage_lang).

    ``passage_unit="sentence"`` turns parallel QA passages into the sentence that holds
    the answer (LAReQA's candidates are sentences), with the sentence next to it as a hard
    negative; languages without an answer sentence are dropped.
    """
    path = Path(path)
    if passage_unit not in PASSAGE_UNITS:
        raise DataError(f"passage unit {passage_unit!r}: choose one of {', '.join(PASSAGE_UNITS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such training file")
    wanted = set(languages or ())
    records: dict[str, Record] = {}
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "langs" in row:
                    record = records.setdefault(str(row["id"]), Record(str(row["id"])))
                    for lang, item in row["langs"].items():
                        if wanted and lang not in wanted:
                            continue
                        passage, negative = item["context"], None
                        if passage_unit == "sentence":
                            passage, negative = answer_sentences(item["context"], item.get("answers", [])) or (None, None)
                        if passage:
                            record.questions[lang] = item["question"]
                            record.passages[lang] = passage
                            if negative:
                                record.negatives[lang] = [negative]
                else:
                    qid = str(row.get("id", number))
                    record = records.setdefault(qid, Record(qid))
                    q_lang, p_lang = row["query_lang"], row["passage_lang"]
                    if wanted and not {q_lang, p_lang} <= wanted:
                        continue
                    record.questions[q_lang] = row["query"]
                    record.passages[p_lang] = row["passage"]
                    if row.get("negatives"):
                        record.negatives[p_lang] = list(row["negatives"])
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise DataError(
                    f"{path}:{number}: not a training row ({type(e).__name__}: {e}); expected "
                    '{"id", "langs": {lang: {"question", "context"}}} or {"query", "passage", "query_lang", "passage_lang"}'
                ) from e
    usable = [r for r in records.values() if r.mono_languages() or r.cross_pairs()]
    if not usable:
        raise DataError(f"{path}: no usable question-passage pairs"
                        + (f" in languages {', '.join(sorted(wanted))}" if wanted else ""))
    return usable


def split_by_id(records: list[Record], validation_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out whole question ids, so no id (in any language) is in both splits."""
    order = np.random.default_rng(seed).permutation(len(records))
    held = int(round(len(records) * validation_fraction))
    return [records[i] for i in order[held:]], [records[i] for i in order[:held]]
