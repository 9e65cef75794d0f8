"""Batch samplers for contrastive training: monolingual, cross-lingual, and hybrid batches.

A batch is a list of (record, query language, passage language). A question id
appears at most once per batch: its translations are positives of each other, so
two of them in one batch would be false negatives. Samplers use numpy only, with
a seeded generator whose state can be saved and restored for exact resumption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from hbt.data import Record
from hbt.errors import DataError

BATCHINGS = ("hybrid", "mono", "cross")


@dataclass(frozen=True)
class Pair:
    record: Record
    query_lang: str
    passage_lang: str


class BatchSampler:
    """Draws batches: monolingual with probability ``alpha``, cross-lingual otherwise.

    ``mono`` is alpha = 1 (LAReQA's X-X-mono), ``cross`` is alpha = 0 (X-Y). A
    monolingual batch draws one language for the whole batch, uniformly or in
    proportion to its number of ids (``weighting="size"``); a cross-lingual batch
    draws a (query, passage) language pair per example.
    """

    def __init__(self, records: list[Record], batch_size: int, batching: str = "hybrid", alpha: float = 0.5,
                 weighting: str = "uniform", seed: int = 0):
        if batching not in BATCHINGS:
            raise DataError(f"batching {batching!r}: choose one of {', '.join(BATCHINGS)}")
        if not 0.0 <= alpha <= 1.0:
            raise DataError(f"alpha {alpha}: must be between 0 and 1")
        self.records = records
        self.batch_size = batch_size
        self.alpha = {"hybrid": alpha, "mono": 1.0, "cross": 0.0}[batching]
        self.rng = np.random.default_rng(seed)
        by_language: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            for lang in record.mono_languages():
                by_language.setdefault(lang, []).append(i)
        self.mono_pools = {lang: np.array(ids) for lang, ids in sorted(by_language.items()) if len(ids) >= batch_size}
        self.cross_pool = np.array([i for i, record in enumerate(records) if record.cross_pairs()])
        if self.alpha > 0 and not self.mono_pools:
            most = max((len(ids) for ids in by_language.values()), default=0)
            raise DataError(f"batch size {batch_size} is larger than the distinct question ids of every language "
                            f"(at most {most}); lower --batch-size or add data")
        if self.alpha < 1 and len(self.cross_pool) < batch_size:
            raise DataError(f"batch size {batch_size} is larger than the {len(self.cross_pool)} question ids "
                            "with a cross-lingual pair; lower --batch-size or add languages")
        sizes = np.array([len(ids) for ids in self.mono_pools.values()], dtype=float)
        self.language_weights = sizes / sizes.sum() if weighting == "size" else np.full(len(sizes), 1 / max(len(sizes), 1))

    def next_batch(self) -> list[Pair]:
        if self.rng.random() < self.alpha:
            lang = self.rng.choice(list(self.mono_pools), p=self.language_weights)
            chosen = self.rng.choice(self.mono_pools[lang], size=self.batch_size, replace=False)
            return [Pair(self.records[i], lang, lang) for i in chosen]
        chosen = self.rng.choice(self.cross_pool, size=self.batch_size, replace=False)
        batch = []
        for i in chosen:
            pairs = self.records[i].cross_pairs()
            query_lang, passage_lang = pairs[self.rng.integers(len(pairs))]
            batch.append(Pair(self.records[i], query_lang, passage_lang))
        return batch

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def batch_statistics(sampler: BatchSampler, batches: int) -> dict:
    """What an epoch of batches looks like: settings, language pairs, and repeated ids (always 0)."""
    kinds, pairs, repeats = Counter(), Counter(), 0
    for _ in range(batches):
        batch = sampler.next_batch()
        kinds["mono" if batch[0].query_lang == batch[0].passage_lang else "cross"] += 1
        pairs.update(f"{p.query_lang}-{p.passage_lang}" for p in batch)
        repeats += len(batch) - len({p.record.id for p in batch})
    return {"batches": batches, "kinds": dict(kinds), "language_pairs": dict(pairs.most_common()),
            "repeated_ids": repeats}
