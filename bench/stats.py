"""Paired comparisons of two models' per-question scores: bootstraps over questions and seeds, and Holm's correction.

An arm is one model configuration, evaluated once per training seed (the untrained
base: once). Its scores are, per group (a language, a language pair), the qa ids and
one value per question and seed: average precision, or language bias. A measure
reduces them to one number: the mean over its groups of the per-question mean
(macro), or the mean over all its questions (pooled: one group).

Two intervals for a difference between arms:
- ``question``: the per-question scores averaged over each arm's seeds, qa ids resampled
  (a qa id with all its translations): the evaluation's noise only.
- ``hierarchical``: qa ids resampled as above and, within each arm, its seeds resampled
  with replacement: the training's variance too (none with one seed). Drawing n seeds
  from n understates their variance by (n − 1)/n (by half with two seeds), so each
  resample's seed mean is put √(n / (n − 1)) times as far from the seeds' mean: the
  variance of a mean of n independent seeds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

Groups = dict[str, tuple[np.ndarray, np.ndarray]]  # group -> (qa ids [Q], values [seeds, Q])


@dataclass(frozen=True)
class Measure:
    name: str  # e.g. "mono", "multi (per language)", "bias, unseen"
    prefix: str  # the groups' setting: "mono", "cross", "multi", "xx-en", ...
    value: str = "ap"  # "ap" or "bias"
    pooled: bool = False  # one mean over all questions (the multilingual pool) instead of a mean of group means
    keep: Callable[[str], bool] = lambda group: True  # on the group's name after the prefix: "en", "en-de", "afr"


@dataclass(frozen=True)
class Difference:
    observed: float
    low: float
    high: float
    p: float


def rng_for(name: str) -> np.random.Generator:
    """A generator seeded by the comparison's name: its p-value does not depend on which ran before it."""
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:16], 16))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (reject where adjusted p ≤ α)."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted, running = np.empty(m), 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (m - position) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def select(arrays: list[dict[str, np.ndarray]], measure: Measure) -> Groups:
    """An arm's groups for ``measure`` from its seeds' saved arrays (``group|ids``, ``group|ap``, ``group|bias``)."""
    names = sorted(k[: -len("|ids")] for k in arrays[0] if k.endswith("|ids"))
    chosen = [g for g in names if g.startswith(measure.prefix + "/") and measure.keep(g.split("/", 1)[1])]
    groups = {}
    for g in chosen:
        ids = arrays[0][f"{g}|ids"]
        if any(not np.array_equal(a[f"{g}|ids"], ids) for a in arrays):
            raise ValueError(f"{g}: the seeds were evaluated on different questions")
        groups[g] = (ids, np.stack([a[f"{g}|{measure.value}"] for a in arrays]).astype(np.float64))
    if measure.pooled and groups:
        groups = {measure.prefix: (np.concatenate([i for i, _ in groups.values()]),
                                   np.concatenate([v for _, v in groups.values()], axis=1))}
    return groups


def _per_seed(groups: Groups, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[resamples, seeds]: each seed's measure under each resample's qa-id counts ([resamples, ids])."""
    total = 0.0
    for group_ids, values in groups.values():
        weights = counts[:, np.searchsorted(ids, group_ids)]  # [R, Q]
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total + (weights @ values.T) / weights.sum(axis=1, keepdims=True)  # [R, seeds]
    return total / len(groups)


def _interval(observed: float, resampled: np.ndarray) -> Difference:
    resampled = resampled[np.isfinite(resampled)]
    low, high = np.percentile(resampled, [2.5, 97.5])
    # Two-sided, counting the observed difference as one of the resamples (Davison and Hinkley, 1997): a p of 0
    # would claim more than the resamples can resolve; the smallest is 2 / (resamples + 1).
    beyond = min(np.sum(resampled <= 0), np.sum(resampled >= 0))
    p = min(1.0, 2 * (beyond + 1) / (len(resampled) + 1))
    return Difference(float(observed), float(low), float(high), float(p))


def resample_seeds(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[resamples]: each resample's mean over its seeds ([resamples, seeds]) drawn with replacement, its spread
    around the seeds' mean widened by √(n / (n − 1)) so that its variance is the seed mean's, not (n − 1)/n of it."""
    n = per_seed.shape[1]
    drawn = np.take_along_axis(per_seed, rng.integers(0, n, per_seed.shape), axis=1).mean(axis=1)
    if n == 1:
        return drawn
    centre = per_seed.mean(axis=1)
    return centre + np.sqrt(n / (n - 1)) * (drawn - centre)


def compare(a: Groups, b: Groups, rng: np.random.Generator, samples: int = 2000) -> tuple[Difference, Difference]:
    """(question bootstrap, hierarchical bootstrap) of measure(a) − measure(b), each seed-averaged."""
    if set(a) != set(b) or not a:
        raise ValueError(f"the arms have different groups: {sorted(set(a) ^ set(b))} (or none)")
    for g in a:
        if not np.array_equal(a[g][0], b[g][0]):
            raise ValueError(f"{g}: the two arms were evaluated on different questions")
    ids = np.unique(np.concatenate([i for i, _ in a.values()]))
    ones = np.ones((1, len(ids)))
    observed = _per_seed(a, ids, ones).mean() - _per_seed(b, ids, ones).mean()
    counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=samples)  # [R, ids]
    first, second = _per_seed(a, ids, counts), _per_seed(b, ids, counts)  # [R, seeds of a], [R, seeds of b]
    question = first.mean(axis=1) - second.mean(axis=1)
    hierarchical = resample_seeds(first, rng) - resample_seeds(second, rng)
    return _interval(observed, question), _interval(observed, hierarchical)


def mean_of(groups: Groups) -> list[float]:
    """The measure of each seed."""
    ids = np.unique(np.concatenate([i for i, _ in groups.values()]))
    return _per_seed(groups, ids, np.ones((1, len(ids))))[0].tolist()
