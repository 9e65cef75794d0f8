"""Dense, lexical and hybrid retrieval on MLQA-R (LAReQA settings), ranked the way the searcher would rank.

    nice -n 10 python -m hbt.bench.lexical_accuracy --bundle B --split test --out bench/reports/lexical

Lexical: BM25 over the bundle's SentencePiece pieces (``hbt.index.lexical``), one
index per pool, so its statistics are the pool's. Dense: exact search over the
bundle's embeddings (cached in ``--cache``). Hybrid: ``hbt.fusion`` over the top
``--depth`` of each side; the candidates neither side returned follow in dense order,
so every ranking is complete and mAP is comparable. A lexical-only run ranks the
candidates it does not match after its matches, in candidate order (ties).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from hbt.fusion import convex_fusion, reciprocal_rank_fusion
from hbt.metrics import summarize


def lexical_scores(pool_pieces: list[np.ndarray], query_pieces: list[np.ndarray], scratch: Path,
                   max_df: float) -> np.ndarray:
    """[queries, pool] BM25 scores, 0 where a candidate holds no query piece."""
    from hbt.index.lexical import LexicalIndex, write_lexical

    path = scratch / "pool.bin"
    write_lexical(path, pool_pieces)
    index = LexicalIndex(path)
    scores = np.zeros((len(query_pieces), len(pool_pieces)))
    for i, pieces in enumerate(query_pieces):
        rows, found = index.search(index.query(pieces, max_df), len(pool_pieces))
        scores[i, rows] = found
    return scores


def ranking(scores: np.ndarray, depth: int) -> list[tuple[int, float]]:
    """The top ``depth`` (row, score), best first, ties by row; only positive scores for lexical."""
    order = np.lexsort((np.arange(len(scores)), -scores))[:depth]
    return [(int(r), float(scores[r])) for r in order]


def fused_order(dense: np.ndarray, lexical: np.ndarray, method: str, depth: int) -> np.ndarray:
    """A complete ranking of the pool (row indices, best first)."""
    if method == "dense":
        return np.lexsort((np.arange(len(dense)), -dense))
    if method == "lexical":
        return np.lexsort((np.arange(len(lexical)), -lexical))
    top_dense = ranking(dense, depth)
    top_lexical = [(r, s) for r, s in ranking(lexical, depth) if s > 0]
    if method == "rrf":
        fused = reciprocal_rank_fusion([[r for r, _ in top_dense], [r for r, _ in top_lexical]])
    else:
        fused = convex_fusion(top_dense, top_lexical, float(method.removeprefix("convex-")))
    head = [r for r, _ in fused]
    rest = np.setdiff1d(np.lexsort((np.arange(len(dense)), -dense)), head, assume_unique=True)
    dense_rank = np.empty(len(dense), dtype=np.int64)
    dense_rank[np.lexsort((np.arange(len(dense)), -dense))] = np.arange(len(dense))
    return np.concatenate([np.array(head, dtype=np.int64), rest[np.argsort(dense_rank[rest])]])


def ranks_of(order: np.ndarray, relevant: list[int]) -> np.ndarray:
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(1, len(order) + 1)
    return np.sort(position[relevant]).astype(float)


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--split", type=click.Choice(["all", "dev", "test"]), default="test", show_default=True)
@click.option("--depth", type=click.IntRange(1), default=100, show_default=True, help="Each side's list fused.")
@click.option("--max-df", type=float, default=None, help="The lexical cut-off (default: hbt's MAX_DF).")
@click.option("--methods", default="dense,lexical,rrf,convex-0.2,convex-0.3,convex-0.5", show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=Path("/tmp/hbt-lexical-accuracy"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/lexical"), show_default=True)
def main(bundle, data_dir, split, depth, max_df, methods, cache, out):
    from hbt.encoder import Encoder
    from hbt.index.lexical import MAX_DF, text_pieces
    from hbt.lareqa import load_dataset

    max_df = MAX_DF if max_df is None else max_df
    methods = methods.split(",")
    dataset = load_dataset(data_dir, "mlqa-r", split=split)
    langs = list(dataset)
    encoder = Encoder(bundle)
    cache.mkdir(parents=True, exist_ok=True)
    embedded, pieces, ids = {}, {}, {}
    for lang in langs:
        ids[lang] = sorted(dataset[lang].questions)
        questions = [dataset[lang].questions[i] for i in ids[lang]]
        stored = cache / f"{encoder.manifest.fingerprint.rpartition(':')[2][:16]}-{split}-{lang}.npz"
        if methods == ["lexical"]:  # no embeddings needed: dense scores stand in as zeros
            embedded[lang] = (np.zeros((len(questions), 1)), np.zeros((len(dataset[lang].candidates), 1)))
        elif not stored.exists():
            click.echo(f"embedding {lang}", err=True)
            np.savez(stored, q=encoder.encode_queries(questions), p=encoder.encode_passages(dataset[lang].candidates))
        if lang not in embedded:
            with np.load(stored) as z:
                embedded[lang] = (z["q"], z["p"])
        pieces[lang] = (text_pieces(encoder.tokenizer, questions), text_pieces(encoder.tokenizer,
                                                                               dataset[lang].candidates))
    groups = {"mono": [(lang, [lang]) for lang in langs],
              "cross": [(x, [y]) for x in langs for y in langs if x != y],
              "multi": [(lang, langs) for lang in langs]}
    results: dict = {}
    for setting, pairs in groups.items():
        per_group = {m: {} for m in methods}
        for query_lang, pool in pairs:
            offsets = np.cumsum([0] + [len(dataset[lang].candidates) for lang in pool])
            dense = embedded[query_lang][0] @ np.vstack([embedded[lang][1] for lang in pool]).T
            lexical = lexical_scores([p for lang in pool for p in pieces[lang][1]], pieces[query_lang][0], cache,
                                     max_df)
            for q, qid in enumerate(ids[query_lang]):
                relevant = [int(offsets[j] + dataset[lang].answers[qid]) for j, lang in enumerate(pool)
                            if qid in dataset[lang].answers]
                if not relevant:
                    continue
                for method in methods:
                    order = fused_order(dense[q], lexical[q], method, depth)
                    per_group[method].setdefault(f"{query_lang}-{'+'.join(pool) if setting != 'multi' else 'all'}",
                                                 []).append(ranks_of(order, relevant))
        for method in methods:
            if setting == "multi":
                summary = summarize([r for ranks in per_group[method].values() for r in ranks])
            else:  # macro average over languages (mono) or ordered pairs (cross), as hbt-bench accuracy does
                parts = [summarize(ranks) for ranks in per_group[method].values()]
                summary = {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}
                summary["per_group_map"] = {g: summarize(r)["map"] for g, r in per_group[method].items()}
            results.setdefault(setting, {})[method] = summary
        click.echo(f"{setting}: " + "  ".join(f"{m} {results[setting][m]['map']:.3f}" for m in methods), err=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"bundle": str(bundle), "fingerprint": encoder.manifest.fingerprint, "split": split, "depth": depth,
            "max_df": max_df, "quantization": encoder.manifest.quantization}
    name = f"accuracy-mlqa-r-{split}" + ("-lexical-max-df-" + str(max_df) if methods == ["lexical"] else "")
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# MLQA-R ({split} half): dense, lexical and hybrid", "",
             f"Bundle {bundle} ({meta['quantization']}), exact dense search; lexical max_df {max_df}; hybrid fuses "
             f"each side's top {depth}. mAP, and language bias (multi: mean spread of a question's answers' ranks).",
             "", "| method | mono mAP | cross mAP | multi mAP | multi R@10 | multi language bias |",
             "|---|---|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {m} | {results['mono'][m]['map']:.3f} | {results['cross'][m]['map']:.3f} | "
                     f"{results['multi'][m]['map']:.3f} | {results['multi'][m]['recall@10']:.3f} | "
                     f"{results['multi'][m]['language_bias']:.1f} |")
    lines += ["", "Mono mAP per language:", "", "| method | " + " | ".join(langs) + " |",
              "|---|" + "---|" * len(langs)]
    for m in methods:
        per = results["mono"][m]["per_group_map"]
        lines.append(f"| {m} | " + " | ".join(f"{per[f'{lang}-{lang}']:.3f}" for lang in langs) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
