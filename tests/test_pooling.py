"""The numpy head (hbt.pooling) and the torch head (hbt.modeling) compute what sentence-transformers' modules do."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.pooling import ACTIVATIONS, POOLINGS, dense, erf, l2_normalize, pool, prompt_mask

torch = pytest.importorskip("torch", reason="the torch head is the reference here")


def batch(lengths: list[int], skip: int, seed: int):
    """Right-padded hidden states [B, T, H] and the mask to pool, with the first ``skip`` positions left out."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((len(lengths), max(lengths), 8)).astype(np.float32)
    mask = (np.arange(max(lengths))[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return hidden, prompt_mask(mask, skip)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), skip=st.integers(0, 3),
       seed=st.integers(0, 2**16), mode=st.sampled_from(POOLINGS))
def test_numpy_and_torch_pooling_equal_sentence_transformers(lengths, skip, seed, mode):
    from sentence_transformers.sentence_transformer.modules import Pooling

    from hbt.modeling import pool as torch_pool

    hidden, mask = batch(lengths, skip, seed)
    features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
    theirs = Pooling(hidden.shape[-1], pooling_mode=mode)(features)["sentence_embedding"].numpy()
    np.testing.assert_allclose(pool(hidden, mask, mode), theirs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(torch_pool(torch.from_numpy(hidden), torch.from_numpy(mask), mode).numpy(), theirs,
                               rtol=1e-6, atol=1e-6)


def test_include_prompt_false_leaves_the_prompt_out_as_sentence_transformers_does():
    """Their Pooling zeroes the first prompt_length mask positions; prompt_mask is that mask."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    hidden, mask = batch([9, 5, 7], 0, seed=3)
    for mode in POOLINGS:
        features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask),
                    "prompt_length": 3}
        theirs = Pooling(8, pooling_mode=mode, include_prompt=False)(features)["sentence_embedding"].numpy()
        np.testing.assert_allclose(pool(hidden, prompt_mask(mask, 3), mode), theirs, rtol=1e-6, atol=1e-6)
        if mode != "lasttoken":  # the last token is never the prompt's
            assert not np.allclose(pool(hidden, mask, mode), theirs)  # leaving the prompt out changes the vector


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_equals_sentence_transformers_dense(activation):
    from sentence_transformers.sentence_transformer.modules import Dense

    from hbt.sources import TORCH_ACTIVATIONS

    torch_name = {ours: theirs for theirs, ours in TORCH_ACTIVATIONS.items()}[activation]
    torch.manual_seed(0)
    layer = Dense(8, 5, activation_function=getattr(torch.nn, torch_name)())
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32) * 3
    theirs = layer({"sentence_embedding": torch.from_numpy(x)})["sentence_embedding"].detach().numpy()
    ours = dense(x, layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy(), activation)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_erf_within_its_stated_error():
    x = np.linspace(-6, 6, 4001)
    assert np.abs(erf(x) - np.array([math.erf(v) for v in x])).max() < 1.5e-7


def test_normalize_gives_unit_rows_and_keeps_zero_rows():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(vectors), [[0.6, 0.8], [0.0, 0.0]])


def test_unknown_modes_are_refused():
    hidden, mask = batch([3], 0, seed=0)
    with pytest.raises(ValueError, match="weightedmean"):
        pool(hidden, mask, "weightedmean")
    with pytest.raises(ValueError, match="swish"):
        dense(hidden[:, 0], np.eye(8, dtype=np.float32), None, "swish")
