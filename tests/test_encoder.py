"""The runtime encoder: order, normalization, batching, truncation, and no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.bundle import read_manifest
from hbt.encoder import Encoder, l2_normalize
from hbt.pooling import mean_pool
from hbt.errors import BundleError
from hbt.openvino_runtime import OpenVINOGraph
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


def test_unknown_runtime_is_refused(tiny_bundle):
    with pytest.raises(BundleError, match="runtime 'tensorrt': choose one of onnxruntime, openvino"):
        Encoder(tiny_bundle, runtime="tensorrt")


def test_openvino_without_the_extra_says_how_to_install(tiny_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'hbt\[openvino\]'"):
        OpenVINOGraph(tiny_bundle, read_manifest(tiny_bundle), threads=1)


@pytest.fixture(scope="module")
def openvino_bundle(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    pytest.importorskip("nncf", reason="the openvino extra is not installed")
    from hbt.export.exporter import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-openvino"
    export_bundle(ExportConfig(source=str(tiny_model_dir), out=out, max_length=64, openvino=True))
    return out


def test_openvino_runtime_agrees_with_onnxruntime(openvino_bundle):
    manifest = read_manifest(openvino_bundle)
    assert {"openvino.xml", "openvino.bin"} <= set(manifest.files)
    openvino = Encoder(openvino_bundle, runtime="openvino", threads=1)
    texts = MULTILINGUAL + ["", "a much longer text " * 5]
    vectors = openvino.encode_passages(texts, batch_size=4)
    reference = Encoder(openvino_bundle).encode_passages(texts)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert (vectors * reference).sum(axis=1).min() > 0.99  # static int8 against dynamic int8
    np.testing.assert_allclose(vectors, np.vstack([openvino.encode_passages([t]) for t in texts]), atol=1e-4)
    assert manifest.fidelity["openvino"]["gate"]["map_loss"] <= 0.005


def test_openvino_runtime_needs_a_bundle_that_carries_it(tiny_bundle):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    with pytest.raises(BundleError, match="hbt-export --openvino"):
        Encoder(tiny_bundle, runtime="openvino")


def test_openvino_runs_the_precision_its_gate_measured(openvino_bundle):
    import openvino

    from hbt.openvino_runtime import inference_precision, native_precision

    recorded = read_manifest(openvino_bundle).details["openvino_precision"]
    assert recorded == native_precision(openvino.Core()) in ("bf16", "f32")  # never OpenVINO's unpinned default
    assert Encoder(openvino_bundle, runtime="openvino")._graph.precision == recorded
    assert inference_precision("bf16", "bf16") == "bf16"
    assert inference_precision("bf16", "f32") == "f32"  # exported on a bf16 CPU, run on one without: exact fp32
    assert inference_precision("f32", "bf16") == "f32"  # the gate measured f32: no silent bf16


def test_openvino_single_texts_run_static_models_of_their_padded_length(openvino_bundle):
    from hbt.openvino_runtime import SINGLE_TEXT_LENGTHS

    encoder = Encoder(openvino_bundle, runtime="openvino", threads=1)
    texts = ["short", "a longer text " * 3, "a text of many more words " * 20]
    lengths = [len(ids) for ids in encoder.tokenizer.encode(texts, encoder.manifest.max_length)[0]]
    batched = encoder.encode(texts)  # a batch runs the dynamic model: no static ones yet
    assert encoder._graph._single_text == {}
    one_by_one = np.vstack([encoder.encode([t]) for t in texts])
    assert (batched * one_by_one).sum(axis=1).min() > 0.999
    assert set(encoder._graph._single_text) == {next(n for n in SINGLE_TEXT_LENGTHS if n >= k) for k in lengths}
    assert len(set(encoder._graph._single_text)) > 1


def test_bench_latency_runs_the_chosen_runtime(tiny_bundle, openvino_bundle, tmp_path):
    from click.testing import CliRunner

    from hbt.cli.bench import main as bench_cli

    def latency(bundle, out):
        return CliRunner().invoke(bench_cli, ["latency", "--bundle", str(bundle), "--runtime", "openvino", "--data-dir",
                                              str(tmp_path), "--num-queries", "5", "--out", str(tmp_path / out)])

    refused = latency(tiny_bundle, "refused")
    assert refused.exit_code != 0 and "hbt-export --openvino" in refused.output
    done = latency(openvino_bundle, "done")
    assert done.exit_code == 0, done.output
    assert "on openvino" in (tmp_path / "done" / "report.md").read_text()
