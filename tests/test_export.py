"""hbt-export: bundles, the fidelity gate, and every bad input as a one-line error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.bundle import MANIFEST, MODEL_FILE, FORMAT_VERSION, read_manifest, sha256_file
from hbt.cli.export import main as export_cli
from hbt.encoder import Encoder
from hbt.errors import BundleError
from hbt.export.exporter import outlier_ratio


def run_export(*args):
    return CliRunner().invoke(export_cli, list(map(str, args)))


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


INT8_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QAttention"}


def graph_ops(bundle) -> set[str]:
    return {node.op_type for node in onnx.load(str(bundle / MODEL_FILE), load_external_data=False).graph.node}


def int8_ops(bundle) -> set[str]:
    return graph_ops(bundle) & INT8_OPS


def test_bundle_is_self_describing(tiny_bundle, tiny_model_dir):
    manifest = read_manifest(tiny_bundle)
    assert manifest.dimension == 32 and manifest.max_length == 64 and manifest.quantization == "none"
    assert manifest.query_prefix == "query: " and manifest.pooling == "mean"
    assert set(manifest.files) == {MODEL_FILE, "sentencepiece.bpe.model"}
    assert manifest.fidelity["min_cosine"] >= 0.9999
    assert {"Attention", "SkipLayerNormalization"} <= graph_ops(tiny_bundle)  # fused: fewer, larger kernels
    assert manifest.source_fingerprint == "sha256:" + sha256_file(tiny_model_dir / "model.safetensors")
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_cli_exports_int8(tiny_model_dir, tmp_path):
    result = run_export(tiny_model_dir, "--out", tmp_path / "b", "--max-length", 64)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "b")
    assert manifest.quantization == "int8" and 0.98 <= manifest.fidelity["min_cosine"] <= 1.0001


def test_outlier_ratio_keeps_matmuls_fp32(tiny_model_dir, tmp_path):
    # Every input's largest token is at least its median one: ratio 1 keeps every MatMul fp32.
    result = run_export(tiny_model_dir, "--out", tmp_path / "all", "--max-length", 64, "--outlier-ratio", 1)
    assert result.exit_code == 0, result.output
    kept = read_manifest(tmp_path / "all").details["fp32_matmuls"]
    assert len(kept) == 2 * 4 and all(ratio >= 1 for ratio in kept.values())  # 2 x (Attention, out, FFN in, FFN out)
    assert not int8_ops(tmp_path / "all")
    assert run_export(tiny_model_dir, "--out", tmp_path / "none", "--max-length", 64, "--outlier-ratio", 0).exit_code == 0
    assert read_manifest(tmp_path / "none").details["fp32_matmuls"] == {}
    assert int8_ops(tmp_path / "none") == INT8_OPS


token_batches = st.tuples(st.integers(1, 4), st.integers(3, 9), st.integers(1, 8), st.integers(0, 2**32 - 1))


@settings(max_examples=50, deadline=None)
@given(token_batches, st.floats(0.01, 100))
def test_outlier_ratio_is_scale_free_and_ignores_padding(shape, scale):
    batch, tokens, hidden, seed = shape
    rng = np.random.default_rng(seed)
    activations = rng.normal(size=(batch, tokens, hidden)).astype(np.float32)
    mask = np.ones((batch, tokens), dtype=np.int64)
    mask[:, -1] = 0
    ratio = outlier_ratio(activations, mask)
    assert ratio >= 1 and np.isclose(outlier_ratio(activations * scale, mask), ratio, rtol=1e-5)
    activations[:, -1] = 1e6  # padding
    assert np.isclose(outlier_ratio(activations, mask), ratio, rtol=1e-5)


@settings(max_examples=50, deadline=None)
@given(token_batches, st.floats(2, 1000))
def test_outlier_ratio_sees_one_loud_token(shape, loudness):
    batch, tokens, hidden, seed = shape
    activations = np.random.default_rng(seed).uniform(0.5, 1, size=(batch, tokens, hidden)).astype(np.float32)
    activations[0, 0, 0] = 2 * loudness  # every other token, most of them, peaks in [0.5, 1]
    assert outlier_ratio(activations, np.ones((batch, tokens))) >= loudness


def test_missing_source(tmp_path):
    assert_one_line_error(run_export(tmp_path / "nope", "--out", tmp_path / "b"), "no such directory")
    assert_one_line_error(run_export("not-an-id", "--out", tmp_path / "b"), "not-an-id")
    assert not (tmp_path / "b").exists()


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_export(tmp_path / "empty", "--out", tmp_path / "b"), "not a model directory")


def test_existing_output_needs_force(tiny_model_dir, tiny_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = sha256_file(out / MODEL_FILE)
    assert_one_line_error(run_export(tiny_model_dir, "--out", out), "already exists", "--force")
    assert sha256_file(out / MODEL_FILE) == before


def test_force_replaces_output(tiny_model_dir, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = run_export(tiny_model_dir, "--out", out, "--quantize", "none", "--force", "--max-length", 32)
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and read_manifest(out).max_length == 32


def test_fidelity_gate_refuses_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from hbt.export import exporter

    monkeypatch.setitem(exporter.MIN_COSINE, "none", 1.5)  # unreachable: every export fails the gate
    result = run_export(tiny_model_dir, "--out", tmp_path / "b", "--quantize", "none")
    assert_one_line_error(result, "min cosine", "nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_min_cosine_sets_the_gate(tiny_model_dir, tmp_path):
    """An explicit gate wins over the default either way, and the manifest records it."""
    assert_one_line_error(run_export(tiny_model_dir, "--out", tmp_path / "b", "--min-cosine", "1"),
                          "min cosine", "--min-cosine")
    assert not (tmp_path / "b").exists()
    assert run_export(tiny_model_dir, "--out", tmp_path / "b", "--min-cosine", "0.5").exit_code == 0
    assert read_manifest(tmp_path / "b").fidelity["threshold_min_cosine"] == 0.5


def copy_bundle(bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def test_checksum_mismatch_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    with open(bundle / MODEL_FILE, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="checksum mismatch"):
        Encoder(bundle)


def test_truncated_model_is_refused_even_with_matching_checksum(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    data = (bundle / MODEL_FILE).read_bytes()
    (bundle / MODEL_FILE).write_bytes(data[: len(data) // 2])
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][MODEL_FILE] = sha256_file(bundle / MODEL_FILE)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        Encoder(bundle)


def test_newer_format_version_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer than this hbt reads"):
        Encoder(bundle)


@pytest.mark.slow
def test_default_int8_bundle_is_faithful_and_cross_lingual(default_bundle):
    manifest = read_manifest(default_bundle)
    assert manifest.quantization == "int8" and manifest.dimension == 384 and manifest.max_length == 512
    # Plain dynamic int8 gives 0.996 / 0.992; the outlier-token MatMuls kept in fp32 give the rest.
    assert manifest.fidelity["mean_cosine"] >= 0.998 and manifest.fidelity["min_cosine"] >= 0.995
    assert 0 < len(manifest.details["fp32_matmuls"]) <= 6
    encoder = Encoder(default_bundle)
    queries = encoder.encode_queries(["Wie hoch ist der Mount Everest?", "月はどのようにしてできたのか"])
    passages = encoder.encode_passages([
        "The Moon probably formed from debris after a giant impact with the early Earth.",
        "Mount Everest is 8,849 metres high, the highest mountain above sea level.",
        "Bread is baked from flour, water, salt and yeast.",
    ])
    assert (np.argmax(queries @ passages.T, axis=1) == [1, 0]).all()
