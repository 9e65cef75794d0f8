"""LAReQA evaluation (XQuAD-R, MLQA-R): answer-sentence retrieval across languages.

Candidates are every sentence of every paragraph; a question's relevant candidates
are the sentence holding its answer, in every language that has the same qa id.
Settings: monolingual (per language), cross-lingual (queries in X, candidates of Y
only, every ordered pair X != Y, macro-averaged) and multilingual (one pool).

MLQA-R has a frozen dev/test split by article (``resources/mlqa-r-split.jsonl``): an
English article and every article in another language that shares a qa id with it
form one group, and each group lies wholly in one half, so no context is in both.
Recipes are chosen on dev; test is reported once.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hbt.corpus import Document, open_text
from hbt.errors import DataError
from hbt.index import passage_text, text_pieces
from hbt.metrics import summarize
from hbt.retrieval import EXACT, Ranker

DATASETS = {"xquad-r": "xquad-r", "mlqa-r": "mlqa-r"}
SPLITS = ("all", "dev", "test")
SPLIT_FILE = Path(__file__).parent / "resources" / "mlqa-r-split.jsonl"  # one line per half and language


@dataclass
class Language:
    candidates: list[str]
    questions: dict[str, str]  # qa id -> question
    answers: dict[str, int]  # qa id -> index of the answer sentence in candidates


@dataclass
class Paragraph:
    title: str  # the article's
    sentences: list[str]
    breaks: list[tuple[int, int]]  # each sentence's [start, end) in the paragraph's context
    questions: list[tuple[str, str, int]]  # (qa id, question, start of its first answer)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise TypeError(what)


def _question(qa: dict) -> tuple[str, str, int]:
    if not qa["answers"]:
        raise ValueError(f"qa {qa['id']!r} has no answer")
    qa_id, question, start = qa["id"], qa["question"], qa["answers"][0]["answer_start"]
    _expect(isinstance(qa_id, str) and isinstance(question, str) and type(start) is int,
             f"qa {qa_id!r}: its id, question or answer_start has the wrong type")
    return qa_id, question, start


def read_paragraphs(path: Path) -> list[Paragraph]:
    """The paragraphs of one LAReQA file (gzipped SQuAD JSON with sentences and sentence breaks), checked:
    a malformed file raises DataError naming the file and the paragraph."""
    try:
        with open_text(path) as handle:
            data = json.load(handle)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable as JSON ({e}); fetch it again with hbt-bench download") from e
    paragraphs, where = [], "top level"
    try:
        for a, article in enumerate(data["data"]):
            where = f"data[{a}]"
            for p, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                sentences = paragraph["sentences"]
                _expect(isinstance(sentences, list) and all(isinstance(s, str) for s in sentences),
                         "sentences must be a list of strings")
                breaks = [(int(start), int(end)) for start, end in paragraph["sentence_breaks"]]
                questions = [_question(qa) for qa in paragraph["qas"]]
                paragraphs.append(Paragraph(article["title"], sentences, breaks, questions))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        problem = f"no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
        raise DataError(f"{path}: {where}: not LAReQA data ({problem}); expected SQuAD JSON whose paragraphs have "
                        "sentences, sentence_breaks and qas") from e
    return paragraphs


def raw_texts(data_dir: Path, folders: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Every candidate sentence and every question of the folders' files, in file order (benchmark workloads)."""
    sentences, questions = [], []
    for folder in folders:
        for file in sorted((Path(data_dir) / folder).glob("*.json.gz")):
            for paragraph in read_paragraphs(file):
                sentences += paragraph.sentences
                questions += [question for _, question, _ in paragraph.questions]
    return sentences, questions


def sampled(qa_id: str, share: float) -> bool:
    """A stable, seed-free choice of about ``share`` of the qa ids, the same in every language and run."""
    return share >= 1.0 or int(hashlib.sha1(qa_id.encode()).hexdigest()[:8], 16) < share * 2**32


def article_split(folder: Path) -> dict[str, dict[str, list[str]]]:
    """half -> language -> article titles: the MLQA-R split, computed from the data (deterministic).

    Articles are joined through shared qa ids (union-find); each group goes to dev or
    test by a hash of its smallest English title (or smallest title), about half each.
    """
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node):
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    articles = []
    for file in sorted(Path(folder).glob("*.json.gz")):
        lang = file.name.split(".")[0]
        for paragraph in read_paragraphs(file):
            articles.append((lang, paragraph.title))
            for qa_id, _, _ in paragraph.questions:
                parent[root(("qa", qa_id))] = root((lang, paragraph.title))
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in dict.fromkeys(articles):
        groups.setdefault(root(node), []).append(node)
    split: dict[str, dict[str, list[str]]] = {"dev": {}, "test": {}}
    for members in groups.values():
        key = min(members, key=lambda node: (node[0] != "en", node[1]))[1]
        half = "dev" if int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"
        for lang, title in members:
            split[half].setdefault(lang, []).append(title)
    return {half: {lang: sorted(titles) for lang, titles in sorted(langs.items())} for half, langs in split.items()}


def split_titles(name: str, split: str) -> dict[str, set[str]] | None:
    """language -> the article titles of ``split`` (None for all), from the frozen split file."""
    if split == "all":
        return None
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name != "mlqa-r":
        raise DataError(f"{name} has no dev/test split (only mlqa-r has); use --split all")
    lines = [json.loads(line) for line in SPLIT_FILE.read_text(encoding="utf-8").splitlines()]
    return {line["lang"]: set(line["titles"]) for line in lines if line["half"] == split}


def load_language(path: Path, share: float = 1.0, titles: set[str] | None = None) -> Language:
    """One language's candidates and questions; ``share`` < 1 keeps the paragraphs of a sample of qa ids,
    ``titles`` only the paragraphs of those articles."""
    candidates, questions, answers = [], {}, {}
    for paragraph in read_paragraphs(path):
        if titles is not None and paragraph.title not in titles:
            continue
        qas = [qa for qa in paragraph.questions if sampled(qa[0], share)]
        if not qas:
            continue
        first = len(candidates)
        candidates.extend(paragraph.sentences)
        for qa_id, question, start in qas:
            hit = next((i for i, (a, b) in enumerate(paragraph.breaks) if a <= start < b), None)
            if hit is not None:
                questions[qa_id] = question
                answers[qa_id] = first + hit
    return Language(candidates, questions, answers)


def load_dataset(data_dir: Path, name: str, languages: list[str] | None = None,
                 share: float = 1.0, split: str = "all") -> dict[str, Language]:
    """The dataset's languages; ``split`` (MLQA-R: dev or test) keeps that half's articles only."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    folder = Path(data_dir) / DATASETS[name]
    files = sorted(folder.glob("*.json.gz"))
    if not files:
        raise DataError(f"{folder}: no {name} files (<lang>.json.gz); get them with hbt-bench download {name} "
                        "or point --data-dir / HBT_DATA at a copy")
    found = {f.name.split(".")[0]: f for f in files}
    missing = sorted(set(languages or ()) - set(found))
    if missing:
        raise DataError(f"{folder}: missing languages {', '.join(missing)}")
    titles = split_titles(name, split)
    return {lang: load_language(found[lang], share, None if titles is None else titles.get(lang, set()))
            for lang in sorted(languages or found)}


SETTINGS = ("mono", "cross", "multi", "x-en")
# The index ranker's depth here: mAP counts every candidate, and at 100 the cut alone costs MLQA-R test's
# multilingual pool .0027 mAP, at 1000 .0002 (bench/reports/eval-through-index).
INDEX_DEPTH = 1000


def evaluate(dataset: dict[str, Language], encode_queries: Callable, encode_passages: Callable,
             settings=("mono", "cross", "multi"), progress: Callable[[str], None] = lambda s: None,
             ranker: Ranker = EXACT, per_question: dict | None = None, tokenizer=None) -> dict:
    """Embed once, then score every setting with ``ranker``: exact ranks, or the index's top ``ranker.depth``.

    The candidates of all languages form one corpus (each candidate tagged with its
    language); a setting's pool is a language filter on it, on both sides in the lexical and
    hybrid modes (``tokenizer``, the bundle's, gives the pieces). Each group's questions go to the
    pool with their language, as a searcher's caller gives it, so ``auto`` fuses in mono only, as
    the product does. ``per_question``, when given,
    receives each group's (qa ids, relevant ranks), keyed ``mono/en``, ``cross/en-de``,
    ``x-en/de-en``, ``multi/en``: for paired tests between models.
    """
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise DataError(f"unknown setting {', '.join(sorted(unknown))}; choose from {', '.join(SETTINGS)}")
    ranker.require_tokenizer(tokenizer)
    langs = list(dataset)
    if "x-en" in settings and "en" not in langs:
        raise DataError("the x-en setting needs English among the dataset's languages")
    for setting in {"cross", "x-en"} & set(settings):
        if len(langs) < 2:
            raise DataError(f"the {setting} setting pairs two languages, and {', '.join(langs)} is one; "
                            "give two languages or more, or drop the setting")
    questions, docs, vectors, first_row = {}, [], [], {}
    for lang in langs:
        progress(f"embedding {lang}")
        ids = sorted(dataset[lang].questions)
        texts = [dataset[lang].questions[i] for i in ids]
        questions[lang] = (ids, encode_queries(texts), text_pieces(tokenizer, texts) if ranker.lexical else None)
        # Untitled sentences: passage_text is the sentence itself, embedded one language at a time.
        candidates = [Document(f"{lang}/{i}", text, lang=lang) for i, text in enumerate(dataset[lang].candidates)]
        first_row[lang] = len(docs)
        docs += candidates
        vectors.append(encode_passages([passage_text(d) for d in candidates]))

    with ranker.pool(docs, np.vstack(vectors), tokenizer) as pool:
        def ranks_for(group: str, query_lang: str, pool_langs: list[str]) -> list[np.ndarray]:
            ids, query_vectors, pieces = questions[query_lang]
            relevant = [[first_row[l] + dataset[l].answers[qid] for l in pool_langs if qid in dataset[l].answers]
                        for qid in ids]
            ranks = pool.ranks(query_vectors, relevant, pool_langs, pieces, query_lang)
            kept = [(qid, found) for qid, wanted, found in zip(ids, relevant, ranks) if wanted]
            out = [found for _, found in kept]
            if per_question is not None:
                per_question[group] = ([qid for qid, _ in kept], out)
            return out

        return _score(langs, settings, ranks_for)


def _score(langs: list[str], settings, ranks_for: Callable[[str, str, list[str]], list[np.ndarray]]) -> dict:
    """Every setting's summary from ``ranks_for(group, query language, pool languages)``."""
    results = {}
    if "mono" in settings:
        per = _answerable({l: summarize(r) for l in langs if (r := ranks_for(f"mono/{l}", l, [l]))}, "mono")
        results["mono"] = {"mean": _macro(per), "per_language": per}
    if "cross" in settings:
        pairs = {f"{x}-{y}": summarize(r) for x in langs for y in langs
                 if x != y and (r := ranks_for(f"cross/{x}-{y}", x, [y]))}
        results["cross"] = {"mean": _macro(_answerable(pairs, "cross")), "pairs": pairs}
    if "x-en" in settings:  # MKQA-like: questions in every other language, English answers only
        pairs = {f"{x}-en": summarize(r) for x in langs if x != "en" and (r := ranks_for(f"x-en/{x}-en", x, ["en"]))}
        results["x-en"] = {"mean": _macro(_answerable(pairs, "x-en")), "pairs": pairs}
    if "multi" in settings:
        ranks = _answerable({l: r for l in langs if (r := ranks_for(f"multi/{l}", l, langs))}, "multi")
        results["multi"] = {"mean": summarize([r for found in ranks.values() for r in found]),
                            "per_language": {l: summarize(found) for l, found in ranks.items()}}
    return results


def _answerable(groups: dict, setting: str) -> dict:
    """``groups`` (languages or language pairs with answerable questions), which must not be empty."""
    if not groups:
        raise DataError(f"the {setting} setting has no question with an answer among its candidates; "
                        "choose other languages or a larger --sample")
    return groups


def _macro(groups: dict[str, dict]) -> dict:
    keys = [k for k in next(iter(groups.values())) if k != "queries"]
    return {k: float(np.mean([g[k] for g in groups.values()])) for k in keys} | {"groups": len(groups)}
