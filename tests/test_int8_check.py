"""An int8 bundle checks itself on the CPU it runs on: cached verdicts, re-measured gates, one-line refusals."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from hbt.bundle import MANIFEST, read_manifest, sha256_file
from hbt.encoder import Encoder
from hbt.errors import FidelityError
from hbt.int8_check import REFERENCE_FILE, SAME_ARITHMETIC, int8_features


@pytest.fixture(scope="module")
def tiny_int8_bundle(tiny_model_dir, tmp_path_factory):
    from hbt.export.exporter import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-int8"
    export_bundle(ExportConfig(source=str(tiny_model_dir), out=out, max_length=64))
    return out


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HBT_CACHE_DIR", str(tmp_path / "cache"))


def tamper_reference(bundle, out, **replace):
    """A copy of ``bundle`` whose int8 reference arrays are replaced, with the manifest's checksum updated."""
    shutil.copytree(bundle, out)
    with np.load(out / REFERENCE_FILE) as reference:
        arrays = dict(reference) | replace
    np.savez(out / REFERENCE_FILE, **arrays)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][REFERENCE_FILE] = sha256_file(out / REFERENCE_FILE)
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_export_records_where_its_figures_were_measured(tiny_int8_bundle):
    manifest = read_manifest(tiny_int8_bundle)
    gate = manifest.fidelity["gate"]
    assert gate["measured_on"]["int8_features"] == int8_features()
    # The export met its limits with room left for other CPUs.
    assert gate["map_loss"] <= gate["export_max_map_loss"] == gate["max_map_loss"] / 2
    assert gate["top10_overlap"] >= gate["export_min_top10_overlap"] == pytest.approx(gate["min_top10_overlap"] + 0.01)
    assert REFERENCE_FILE in manifest.files


def test_first_use_checks_the_probe_then_the_verdict_is_cached(tiny_int8_bundle):
    first = Encoder(tiny_int8_bundle).int8_check
    assert first.passed and first.same_arithmetic and not first.cached
    assert first.probe_min_cosine >= SAME_ARITHMETIC
    again = Encoder(tiny_int8_bundle).int8_check
    assert again.cached and again.map_loss == first.map_loss
    assert "passed" in again.summary() and "cached" in again.summary()


def test_other_arithmetic_re_measures_the_gate_here(tiny_int8_bundle, tmp_path):
    with np.load(tiny_int8_bundle / REFERENCE_FILE) as reference:
        probe = reference["probe_onnxruntime"]
    rng = np.random.default_rng(0)
    moved = probe + 0.05 * rng.normal(size=probe.shape).astype(np.float32)  # as if another CPU had exported it
    bundle = tamper_reference(tiny_int8_bundle, tmp_path / "b", probe_onnxruntime=moved)
    check = Encoder(bundle).int8_check
    assert not check.same_arithmetic and check.probe_min_cosine < SAME_ARITHMETIC
    assert check.passed  # the int8 graph itself is fine: re-measured against its fp32 vectors, it passes
    assert check.map_loss == pytest.approx(read_manifest(tiny_int8_bundle).fidelity["gate"]["map_loss"], abs=1e-6)


def test_a_bundle_below_its_gate_here_is_refused_in_one_line(tiny_int8_bundle, tmp_path):
    with np.load(tiny_int8_bundle / REFERENCE_FILE) as reference:
        shape = reference["fp32_queries"].shape
    rng = np.random.default_rng(1)
    noise = lambda: rng.normal(size=shape).astype(np.float32)  # noqa: E731 - fp32 vectors this graph cannot match
    bundle = tamper_reference(tiny_int8_bundle, tmp_path / "b", probe_onnxruntime=noise()[:8], fp32_queries=noise(),
                              fp32_passages=noise())
    with pytest.raises(FidelityError, match="falls below its gate on this CPU.*Re-export it on this machine") as error:
        Encoder(bundle)
    assert "\n" not in str(error.value)

    from hbt.cli.index import main as index_cli

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "1", "text": "hello", "lang": "en"}\n')
    result = CliRunner().invoke(index_cli, ["build", str(corpus), "--index", str(tmp_path / "i"), "--bundle", str(bundle)])
    assert result.exit_code == 2 and "falls below its gate" in result.output and "Traceback" not in result.output


def test_fp32_bundles_are_not_checked(tiny_bundle):
    assert Encoder(tiny_bundle).int8_check is None


# The first stage of the check, the probe texts, under emulation: the bundle's checksums are verified natively
# (hashing 120 MB under qemu takes minutes), and the whole gate set is not re-encoded there.
NO_SATURATION = 0.999
HASWELL_PROBE = """
import sys
from hbt.encoder import Encoder
from hbt.int8_check import probe_agreement
print(probe_agreement(Encoder(sys.argv[1], threads=1, verify=False, check_int8=False)))
"""


@pytest.mark.slow
def test_no_int8_kernel_saturates_on_an_avx2_cpu_without_vnni(default_bundle):
    """Under qemu's Haswell (AVX2, no AVX-512, no VNNI), whose int8 kernel saturates where others do not."""
    if platform.machine() != "x86_64":
        pytest.skip("qemu's Haswell emulates an x86-64 CPU; this machine is not one")
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 not installed (Debian: apt-get install qemu-user; make install does it as root)")
    read_manifest(default_bundle)  # checksums
    run = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", HASWELL_PROBE, str(default_bundle)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    agreement = float(run.stdout.strip().splitlines()[-1])
    # No int8 product saturates there: what differs is float rounding in the fp32 parts (AVX2's against AVX-512's
    # kernels), measured at .99954 for e5-small; the previous graph's saturating kernel gave .9955. Below
    # SAME_ARITHMETIC the check re-measures the gate set on that CPU, which is the design, not a failure.
    assert agreement >= NO_SATURATION, agreement


def test_index_build_verify_and_the_server_report_the_check(tiny_int8_bundle, tmp_path):
    from hbt.cli.index import main as index_cli

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "1", "text": "The cat sleeps.", "lang": "en"}\n{"id": "2", "text": "Die Katze schläft.", "lang": "de"}\n')
    index = tmp_path / "index"
    for args in (["build", str(corpus), "--index", str(index), "--bundle", str(tiny_int8_bundle)], ["verify", str(index)]):
        result = CliRunner().invoke(index_cli, args)
        assert result.exit_code == 0, result.output
        assert "int8 check (onnxruntime" in result.output and "passed" in result.output

    pytest.importorskip("starlette", reason="the server needs the serve extra")
    pytest.importorskip("httpx", reason="Starlette's test client needs httpx (the dev extra)")
    from starlette.testclient import TestClient

    from hbt.search import Searcher
    from hbt.serve.app import create_app

    with TestClient(create_app(Searcher.open(index)), base_url="http://localhost") as client:
        check = client.get("/info").json()["int8_check"]
    assert check["passed"] and check["runtime"] == "onnxruntime" and check["max_map_loss"] == 0.005


def test_the_demo_goes_on_in_fp32_when_int8_cannot_hold_its_gate(tiny_int8_bundle, tiny_bundle, tmp_path, monkeypatch,
                                                                 capsys):
    from hbt import demo

    with np.load(tiny_int8_bundle / REFERENCE_FILE) as reference:
        shape = reference["fp32_queries"].shape
    rng = np.random.default_rng(2)
    noise = lambda: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    failing = tamper_reference(tiny_int8_bundle, tmp_path / "b", probe_onnxruntime=noise()[:8], fp32_queries=noise(),
                               fp32_passages=noise())
    monkeypatch.setattr(demo, "ensure_bundle", lambda bundle, quantize: failing if quantize == "int8" else tiny_bundle)
    encoder = demo.demo_encoder(tmp_path)
    assert encoder.manifest.quantization == "none"
    said = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(said) == 1 and said[0].startswith("int8 cannot hold its fidelity gate on this CPU, so the demo goes on in fp32")
