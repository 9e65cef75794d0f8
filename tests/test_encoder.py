"""The runtime encoder: order, normalization, batching, truncation, and no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.encoder import Encoder, l2_normalize, mean_pool
from tests.conftest import MULTILINGUAL


def test_output_is_normalized_float32_in_input_order(tiny_bundle):
    encoder = Encoder(tiny_bundle)
    texts = MULTILINGUAL + ["", "a much longer text " * 5]
    together = encoder.encode_passages(texts, batch_size=4)
    one_by_one = np.vstack([encoder.encode_passages([t]) for t in texts])
    assert together.dtype == np.float32 and together.shape == (len(texts), 32)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)  # padding never leaks in


def test_query_and_passage_prefixes_differ(tiny_bundle):
    encoder = Encoder(tiny_bundle)
    assert not np.allclose(encoder.encode_queries(["cat"]), encoder.encode_passages(["cat"]))
    np.testing.assert_allclose(encoder.encode_queries(["cat"]), encoder.encode(["query: cat"]), atol=1e-6)


def test_truncation_is_counted(tiny_bundle, caplog):
    encoder = Encoder(tiny_bundle)
    encoder.encode_passages(["short", "long " * 500, "longer " * 900])
    assert encoder.truncated == 2
    assert "2 of 3 texts were longer than 64 tokens" in caplog.text


def test_thread_count_is_configurable(tiny_bundle):
    vectors = [Encoder(tiny_bundle, threads=n).encode(["threads"]) for n in (1, 2)]
    np.testing.assert_allclose(*vectors, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(0, 2**32 - 1))
def test_mean_pool_ignores_masked_tokens(lengths, seed):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(len(lengths), 6, 4)).astype(np.float32)
    mask = np.array([[1] * n + [0] * (6 - n) for n in lengths])
    pooled = mean_pool(hidden, mask)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(pooled[i], hidden[i, :n].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(pooled), axis=1), 1.0, rtol=1e-5)


def test_runtime_does_not_import_torch(tiny_bundle):
    code = (
        "import sys; from hbt.encoder import Encoder; "
        f"Encoder({str(tiny_bundle)!r}).encode_queries(['hello']); "
        "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
