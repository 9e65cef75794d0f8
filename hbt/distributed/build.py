"""hbt-index build --ray: the corpus read and embedded on a Ray cluster, segments written by Ray tasks.

The work is staged beside the index, in ``DIR.ray-build/``, so that a rerun after a
crash or a preemption does only what is missing::

    plan.json               fingerprints of corpus and bundle, settings, which part each id goes to
    part-000003/            a finished part: one segment's files and entry.json, renamed into place whole
    part-000003.tmp-<id>/   a part being written (removed by the next run)

A stable hash of each document id picks one of 65,536 buckets, and the plan gives runs
of buckets to parts of about ``segment_size`` documents, so that duplicate ids meet in
one part, where they are refused as in a local build. When every part is finished, the
driver takes the index's write lock, renames the parts into the index as new segments
and commits: the result is an ordinary index.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from hbt.distributed.cluster import cluster_cpus, connect
from hbt.distributed.corpus import CorpusSource, batch_documents
from hbt.encoder import Encoder
from hbt.errors import DataError, SearchIndexError
from hbt.index import (ENCODE_CHUNK, IndexConfig, Manifest, bundle_tokenizer, check_build_target, commit_staged,
                       discard_unfinished, is_staged, passage_text, remove, stage_segment, write_atomically)

BUCKETS = 1 << 16
PLAN_FILE = "plan.json"
ACTOR_THREADS = 2  # onnxruntime threads per encoder actor unless --threads says otherwise


def staging_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.ray-build"


def part_name(number: int) -> str:
    return f"part-{number:06d}"


def buckets(ids: list[str]) -> np.ndarray:
    """Each id's bucket: 16 bits of its BLAKE2b hash, the same in every process and on every machine."""
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=2).digest(), "big") for i in ids],
                    dtype=np.int64)


def parts_of(ids: list[str], first_bucket: list[int]) -> np.ndarray:
    """The part each id goes to: the run of buckets holding its bucket."""
    return np.searchsorted(first_bucket, buckets(ids), side="right") - 1


def encoder_pool(actors: int | None, threads: int, cpus: float) -> tuple[int, int, float]:
    """Encoder actors, onnxruntime threads each, and the CPUs each reserves.

    The pool reserves every CPU but one: a pool that takes them all leaves none for the
    read tasks that feed it, and the job hangs (Ray issue 44687).
    """
    threads = threads or ACTOR_THREADS
    actors = actors or max(1, int(cpus - 1) // threads)
    return actors, threads, min(threads, max(cpus - 1, 0) / actors)


def build_index_on_ray(corpus: str | list[str], bundle: Path | str, out: Path | str,
                       config: IndexConfig = IndexConfig(), actors: int | None = None, address: str | None = None,
                       force: bool = False, skip_invalid: bool = False,
                       make_encoder: Callable | None = None) -> Manifest:
    """Build an index at ``out`` from ``corpus`` (files or directories, local paths or URLs) on a Ray cluster.

    ``actors`` encoder actors (default: as many as the cluster's CPUs allow with
    ``config.threads`` each) embed the passages; ``make_encoder`` (default: the bundle's
    Encoder) is called once per actor. Returns the committed manifest.
    """
    if corpus == "-":
        raise DataError("-: a Ray build reads files, directories or URLs that every node can reach, not stdin")
    out = Path(out)
    check_build_target(out, force)  # early, before the cluster works; commit_parts decides again under the lock
    encoder = Encoder(bundle, threads=1)  # the bundle checked once, here, before the cluster works
    staging = staging_dir(out)
    with connect(address):
        source = CorpusSource(corpus, skip_invalid)
        plan = read_or_make_plan(staging, source, encoder.manifest.fingerprint, config, skip_invalid)
        actors, threads, reserve = encoder_pool(actors, config.threads, cluster_cpus())
        make_encoder = make_encoder or functools.partial(Encoder, str(Path(bundle).resolve()), threads=threads)
        build_parts(source, plan, staging, encoder.dimension, config, make_encoder, actors, reserve,
                    str(Path(bundle).resolve()))
    return commit_parts(out, staging, plan, encoder, config, force)


def read_or_make_plan(staging: Path, source: CorpusSource, bundle_fingerprint: str, config: IndexConfig,
                      skip_invalid: bool) -> dict:
    """The plan of an unfinished build of the same corpus, bundle and settings, or a new one.

    A new plan reads the corpus once (checking every line) to count each bucket's documents.
    """
    settings = {"M": config.M, "ef_construction": config.ef_construction, "ef": config.ef,
                "segment_size": config.segment_size, "skip_invalid": skip_invalid}
    wanted = {"corpus": source.fingerprint(), "bundle": bundle_fingerprint, "settings": settings}
    path = staging / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text(encoding="utf-8"))
        for key in wanted:
            if plan[key] != wanted[key]:
                raise SearchIndexError(f"{staging}: an unfinished build with another {key}; rerun it with the "
                                       f"same corpus, bundle and settings, or remove {staging} to start over")
        return plan
    counts = np.zeros(BUCKETS, dtype=np.int64)
    for batch in ray.data.read_datasource(source).map_batches(_count_buckets, batch_size=None,
                                                              batch_format="pyarrow").iter_batches():
        counts += batch["counts"].sum(axis=0)
    if not counts.any():
        raise DataError("the corpus has no documents; give a JSONL or TSV file with at least one")
    first_bucket, part_documents = split_buckets(counts, config.segment_size)
    plan = wanted | {"documents": int(counts.sum()), "routing": "blake2b-16 bucket of the UTF-8 id",
                     "first_bucket": first_bucket, "part_documents": part_documents}
    staging.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(plan).encode("utf-8"))
    return plan


def split_buckets(counts: np.ndarray, segment_size: int) -> tuple[list[int], list[int]]:
    """Runs of buckets as parts of about ``segment_size`` documents: each part's first bucket and documents.

    A bucket goes to the part where its first document falls, so a part can be empty when
    one bucket holds more than a part's share (tiny segment sizes).
    """
    documents = int(counts.sum())
    parts = math.ceil(documents / segment_size)
    part_of_bucket = np.minimum((np.cumsum(counts) - counts) * parts // documents, parts - 1)
    return (np.searchsorted(part_of_bucket, np.arange(parts)).tolist(),
            np.bincount(part_of_bucket, weights=counts, minlength=parts).astype(int).tolist())


def _count_buckets(block: pa.Table) -> dict[str, np.ndarray]:
    return {"counts": np.bincount(buckets(block["id"].to_pylist()), minlength=BUCKETS)[None, :]}


def build_parts(source: CorpusSource, plan: dict, staging: Path, dimension: int, config: IndexConfig,
                make_encoder: Callable, actors: int, reserve: float, bundle: str) -> None:
    """Write every planned part that is not finished yet: read, embed on the actor pool, group, write
    (each part's lexical part tokenized by the ``bundle``'s tokenizer, in the task that writes it)."""
    discard_unfinished(staging)  # parts whose writers died
    missing = [n for n, count in enumerate(plan["part_documents"]) if count and not is_staged(staging / part_name(n))]
    if not missing:
        return
    (ray.data.read_datasource(source)
     .map_batches(_route, fn_args=(plan["first_bucket"], missing), batch_size=None, batch_format="pyarrow")
     .map_batches(EmbedPassages, fn_constructor_args=(make_encoder,), compute=ActorPoolStrategy(size=actors),
                  num_cpus=reserve, batch_size=ENCODE_CHUNK, batch_format="numpy")
     .groupby("part", num_partitions=len(missing))
     .map_groups(write_part, fn_args=(str(staging), plan["part_documents"], dimension, config, bundle),
                 batch_format="numpy")
     .materialize())
    unwritten = [n for n in missing if not is_staged(staging / part_name(n))]
    if unwritten:
        raise DataError(f"{part_name(unwritten[0])}: no documents reached it; the corpus changed since the build "
                        f"was planned: remove {staging} and rerun")


def _route(block: pa.Table, first_bucket: list[int], missing: list[int]) -> pa.Table:
    """The block's documents bound for the missing parts, with their part number."""
    parts = parts_of(block["id"].to_pylist(), first_bucket)
    return block.append_column("part", pa.array(parts, pa.int32())).filter(pa.array(np.isin(parts, missing)))


class EmbedPassages:
    """Ray Data's callable class: the bundle loads once per actor, each call embeds one batch of passages."""

    def __init__(self, make_encoder: Callable):
        self.encoder = make_encoder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        documents = batch_documents(batch, range(len(batch["id"])))
        return batch | {"vector": self.encoder.encode_passages([passage_text(d) for d in documents])}  # [n, d]


def write_part(group: dict[str, np.ndarray], staging: str, part_documents: list[int], dimension: int,
               config: IndexConfig, bundle: str) -> dict[str, list]:
    """One part's documents and vectors written as a segment, renamed into the staging directory when whole."""
    number = int(group["part"][0])
    final = Path(staging) / part_name(number)
    if len(group["id"]) != part_documents[number]:
        raise DataError(f"{final}: {len(group['id'])} documents, the plan counted {part_documents[number]}; the "
                        f"corpus changed since the build was planned: remove {staging} and rerun")
    order = np.argsort(group["id"], kind="stable")  # labels follow ids, so a rerun writes the same part
    chunks = (order[start : start + ENCODE_CHUNK] for start in range(0, len(order), ENCODE_CHUNK))
    entry = stage_segment(final, dimension, config,
                          ((batch_documents(group, rows), group["vector"][rows]) for rows in chunks),
                          bundle_tokenizer(bundle))  # the driver verified the bundle
    return {"part": [number], "documents": [entry.count]}


def commit_parts(out: Path, staging: Path, plan: dict, encoder, config: IndexConfig,
                 force: bool = False) -> Manifest:
    """Commit the finished parts into the index as new segments (``hbt.index.commit_staged``), then drop the staging.

    An index that appeared at ``out`` while the cluster worked is refused (unless ``force``)
    under the write lock; the parts stay staged, so a rerun with --force commits them at once.
    """
    parts = [staging / part_name(number) for number, count in enumerate(plan["part_documents"]) if count]
    committed = commit_staged(out, parts, encoder, config, force)
    remove(staging)
    return committed
