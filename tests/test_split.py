"""MLQA-R's frozen dev/test split by article: disjoint, deterministic, and what load_dataset and hbt-bench read."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hbt import lareqa
from hbt.errors import DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_articles(folder: Path, lang: str, articles: dict[str, list[str]]) -> None:
    """articles: title -> qa ids, one paragraph per article with one sentence per question."""
    data = {"data": []}
    for title, ids in articles.items():
        sentences = [f"{lang} {title} {i}." for i in ids]
        breaks, start = [], 0
        for s in sentences:
            breaks.append([start, start + len(s)])
            start += len(s) + 1
        data["data"].append({"title": title, "paragraphs": [{
            "context": " ".join(sentences), "sentences": sentences, "sentence_breaks": breaks,
            "qas": [{"id": i, "question": f"{lang} {i}?", "answers": [{"text": "x", "answer_start": b[0]}]}
                    for i, b in zip(ids, breaks)]}]})
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{lang}.json.gz", "wt", encoding="utf-8") as f:
        json.dump(data, f)


def test_articles_linked_by_a_question_stay_in_one_half(tmp_path):
    folder = tmp_path / "mlqa-r"
    english = {f"Article {n}": [f"q{n}a", f"q{n}b"] for n in range(40)}
    write_articles(folder, "en", english)
    # German articles cut differently: "Artikel 3" holds questions of English articles 3 and 4.
    write_articles(folder, "de", {"Artikel 3": ["q3a", "q4b"], "Artikel 7": ["q7b"]})
    split = lareqa.article_split(folder)
    assert split == lareqa.article_split(folder)  # deterministic
    half_of = {(lang, t): half for half, langs in split.items() for lang, titles in langs.items() for t in titles}
    assert len(half_of) == 42  # every article, once
    assert half_of["en", "Article 3"] == half_of["en", "Article 4"] == half_of["de", "Artikel 3"]
    assert half_of["en", "Article 7"] == half_of["de", "Artikel 7"]
    assert {len(split["dev"]["en"]), len(split["test"]["en"])} != {0, 39}  # both halves hold articles


@pytest.mark.skipif(not (REAL / "mlqa-r").is_dir(), reason="MLQA-R is not in ../shared/data")
def test_the_committed_split_is_the_data_s_and_its_halves_share_no_context_or_question():
    committed = {half: {lang: sorted(titles) for lang, titles in lareqa.split_titles("mlqa-r", half).items()}
                 for half in ("dev", "test")}
    assert committed == lareqa.article_split(REAL / "mlqa-r")
    dev, test = (lareqa.load_dataset(REAL, "mlqa-r", split=half) for half in ("dev", "test"))
    everything = lareqa.load_dataset(REAL, "mlqa-r")
    for lang in everything:
        assert len(dev[lang].questions) + len(test[lang].questions) == len(everything[lang].questions)
        contexts = {half: {" ".join(p.sentences) for p in lareqa.read_paragraphs(REAL / "mlqa-r" / f"{lang}.json.gz")
                           if p.title in committed[half].get(lang, ())} for half in committed}
        assert contexts["dev"] and contexts["test"] and not contexts["dev"] & contexts["test"]
    ids = lambda data: {i for language in data.values() for i in language.questions}
    assert not ids(dev) & ids(test)


def test_only_mlqa_r_has_a_split(tmp_path):
    write_articles(tmp_path / "xquad-r", "en", {"A": ["q1"]})
    with pytest.raises(DataError, match="no dev/test split"):
        lareqa.load_dataset(tmp_path, "xquad-r", split="test")
    with pytest.raises(DataError, match="unknown split"):
        lareqa.split_titles("mlqa-r", "train")


def test_a_half_keeps_only_its_articles(tmp_path):
    dev_title = sorted(lareqa.split_titles("mlqa-r", "dev")["en"])[0]
    test_title = sorted(lareqa.split_titles("mlqa-r", "test")["en"])[0]
    write_articles(tmp_path / "mlqa-r", "en", {dev_title: ["d1", "d2"], test_title: ["t1"]})
    assert set(lareqa.load_dataset(tmp_path, "mlqa-r", split="test")["en"].questions) == {"t1"}
    assert set(lareqa.load_dataset(tmp_path, "mlqa-r", split="dev")["en"].questions) == {"d1", "d2"}
    assert len(lareqa.load_dataset(tmp_path, "mlqa-r")["en"].questions) == 3


def test_bench_accuracy_reports_one_half(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from hbt.cli.bench import main as bench_cli

    for lang in ("en", "de"):
        titles = [sorted(lareqa.split_titles("mlqa-r", half)[lang])[0] for half in ("dev", "test")]
        write_articles(tmp_path / "mlqa-r", lang, {titles[0]: ["d1", "d2"], titles[1]: ["t1", "t2", "t3"]})
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "mlqa-r",
                                            "--split", "test", "--data-dir", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["split"] == "test" and saved["settings"]["multi"]["mean"]["queries"] == 6
    assert (out / "report.md").read_text().startswith("# mlqa-r test:")
