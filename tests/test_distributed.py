"""Data parallel training for real: 2 gloo processes must match one process on the same global batch, and stop together."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.multiprocessing as mp

from hbt.data import Record
from hbt.modeling import DualEncoder
from hbt.sampler import BatchSampler, Pair
from hbt.sources import resolve_source
from hbt.train import StopRequest, TrainConfig, backward
from tests.test_train import make_records

WORLD = 2
# A collective that one rank skips never returns: the process group's timeout turns that deadlock into an error.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def hybrid_batch() -> list[Pair]:
    return BatchSampler(make_records(40), 8, "hybrid", 0.5, seed=3).next_batch()


def batch_with_negatives_on_rank_zero_only() -> list[Pair]:
    """8 pairs; the first half (rank 0's slice) carries hard negatives, two of them with two each."""
    batch = []
    for i in range(8):
        negatives = {"en": [f"negative {i} a", f"negative {i} b"][: 1 + (i % 2)]} if i < 4 else {}
        batch.append(Pair(Record(f"q{i}", {"en": f"question {i}"}, {"en": f"passage {i}"}, negatives), "en", "en"))
    return batch


# name -> (global batch, TrainConfig overrides)
CASES = {"hybrid": (hybrid_batch, {}), "uneven negatives": (batch_with_negatives_on_rank_zero_only, {}),
         "translations": (hybrid_batch, {"translation_weight": 1.0})}


def one_step(model_dir: str, case: str) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one global batch of 8, through the training loop's backward."""
    torch.manual_seed(0)
    model = DualEncoder(resolve_source(model_dir)).eval()  # no dropout: both runs see one function
    make_batch, overrides = CASES[case]
    config = TrainConfig(base=model_dir, data="", out="", batch_size=8, max_query_length=16, max_passage_length=32,
                         **overrides)
    loss = backward(model, make_batch(), config)
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rank_main(rank: int, model_dir: str, case: str, store: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                                         timeout=COLLECTIVE_TIMEOUT)
    try:
        results[rank] = one_step(model_dir, case)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_processes_match_one(tiny_model_dir, tmp_path, case):
    single_loss, single_grads = one_step(str(tiny_model_dir), case)
    results = mp.Manager().dict()
    mp.spawn(rank_main, args=(str(tiny_model_dir), case, str(tmp_path / "store"), results), nprocs=WORLD)
    for rank in range(WORLD):
        loss, grads = results[rank]
        assert loss == pytest.approx(single_loss, rel=1e-5)
        assert grads.keys() == single_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, single_grads[name], rtol=1e-4, atol=1e-6)


def stop_rank_main(rank: int, store: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                                         timeout=COLLECTIVE_TIMEOUT)
    try:
        stop = StopRequest()
        results[rank, "before"] = stop.agreed(torch.device("cpu"))
        stop.requested = rank == 1  # only one process got the signal
        results[rank, "after"] = stop.agreed(torch.device("cpu"))
    finally:
        torch.distributed.destroy_process_group()


def test_a_stop_asked_of_one_process_stops_every_process_at_the_same_step(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(stop_rank_main, args=(str(tmp_path / "store"), results), nprocs=WORLD)
    assert [results[rank, "before"] for rank in range(WORLD)] == [False, False]
    assert [results[rank, "after"] for rank in range(WORLD)] == [True, True]
