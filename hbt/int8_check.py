"""An int8 bundle proves itself where it runs: its vectors checked against its fp32 reference, once per CPU.

Int8 results depend on the CPU's kernels (issue 20: the same graph lost .015 gate-set
mAP on AVX-512 VNNI and .021 on AVX2, whose u8s8 kernel saturates). hbt-export makes
graphs whose int8 products are the same everywhere (their float parts still round per CPU
family), and stores beside them
(``int8_reference.npz``) the fp32 graph's vectors of the gate set and the int8 vectors
of a few probe texts as the exporting CPU computed them. On first use on a CPU:

1. the probe texts are encoded (milliseconds). If they match the exporting CPU's
   (cosine >= ``SAME_ARITHMETIC``), this CPU computes what the gate measured, and the
   export's gate figures hold here;
2. otherwise the whole gate set is encoded here (seconds) and scored against the fp32
   vectors, with the gate's own limits.

The verdict is cached per bundle, runtime, CPU and onnxruntime version in the user's
cache directory, so later uses cost nothing. A bundle below the gate on this CPU is
refused in one line with the figures and the remedy (re-export on this machine, or
fp32): hbt never serves int8 vectors below the gate silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hbt.cache import cache_dir
from hbt.errors import FidelityError

log = logging.getLogger(__name__)

REFERENCE_FILE = "int8_reference.npz"
# Probe vectors this close to the exporting CPU's (float rounding of the same kernels) let the export's gate
# figures stand; below it the gate set is re-measured. Between CPUs with other float kernels e5-small's bundle
# measured .99954 (Sapphire Rapids against qemu's AVX2 Haswell), and a saturating int8 kernel .9955.
SAME_ARITHMETIC = 0.9999
# The CPU features that choose onnxruntime's and OpenVINO's int8 kernels.
INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_features() -> list[str]:
    """The int8-relevant features of this CPU, e.g. ['avx2', 'avx512_vnni']."""
    from hbt.machine import cpu_features

    return sorted(set(INT8_FEATURES) & cpu_features())


def measured_on() -> dict:
    """Where figures were measured: the CPU model and its int8-relevant features."""
    from hbt.machine import cpu_model

    return {"cpu": cpu_model(), "int8_features": int8_features()}


@dataclass(frozen=True)
class Int8Check:
    """The verdict on an int8 bundle on this CPU, and the figures behind it."""

    runtime: str
    cpu: str
    int8_features: list[str]
    same_arithmetic: bool  # the probe texts match the exporting CPU's vectors
    probe_min_cosine: float
    map_loss: float  # gate-set mAP lost to fp32: measured here, or the export's when the arithmetic is the same
    top10_overlap: float
    max_map_loss: float
    min_top10_overlap: float
    seconds: float  # what the check cost when it ran
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.map_loss <= self.max_map_loss and self.top10_overlap >= self.min_top10_overlap

    def summary(self) -> str:
        how = ("computes what the exporting CPU computed" if self.same_arithmetic
               else "its vectors differ from the exporting CPU's beyond rounding, so the gate set was re-measured here")
        return (f"int8 check ({self.runtime}, {self.cpu}, {' '.join(self.int8_features) or 'no int8 features'}): "
                f"{'passed' if self.passed else 'FAILED'}, {how}: gate-set mAP loss {self.map_loss:.4f} "
                f"(allowed {self.max_map_loss}), top-10 overlap {self.top10_overlap:.3f} "
                f"(allowed {self.min_top10_overlap}){', cached' if self.cached else f', {self.seconds * 1000:.0f} ms'}")

    def to_json(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def write_reference(path: Path, texts: list[str], topics: np.ndarray, fp32_queries: np.ndarray,
                    fp32_passages: np.ndarray, probe: np.ndarray, probe_vectors: dict[str, np.ndarray]) -> None:
    """The bundle's reference: gate texts, their fp32 vectors, and each runtime's int8 probe vectors [P, D]."""
    np.savez(path, texts=np.array(texts), topics=topics, fp32_queries=fp32_queries, fp32_passages=fp32_passages,
             probe=probe, **{f"probe_{runtime}": vectors for runtime, vectors in probe_vectors.items()})


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine, for bundles whose vectors are not normalized too."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def probe_indices(topics: np.ndarray) -> np.ndarray:
    """The probe texts: every text of the first topic, one per language in hbt's gate set."""
    return np.flatnonzero(topics == topics.min())


def probe_agreement(encoder) -> float | None:
    """The least cosine between this CPU's int8 vectors of the probe texts and the exporting CPU's (None: no probes)."""
    with np.load(encoder.bundle_dir / REFERENCE_FILE) as reference:
        if f"probe_{encoder.runtime}" not in reference:
            return None
        texts = [str(reference["texts"][i]) for i in reference["probe"]]
        expected = reference[f"probe_{encoder.runtime}"]
    return float(cosines(encoder.encode_queries(texts), expected).min())


def check_int8(encoder, gate: dict) -> Int8Check | None:
    """The int8 verdict for ``encoder`` on this CPU (cached); None for a bundle without a reference.

    ``gate`` holds the export's gate figures and limits for the encoder's runtime.
    """
    manifest = encoder.manifest
    if REFERENCE_FILE not in manifest.files:
        return None
    cpu = measured_on()
    import onnxruntime

    key = hashlib.sha256(json.dumps([manifest.fingerprint, encoder.runtime, cpu, onnxruntime.__version__]).encode()).hexdigest()
    cache = cache_dir() / "int8-checks" / f"{key[:32]}.json"
    try:
        return Int8Check(**{k: v for k, v in json.loads(cache.read_text()).items() if k != "passed"} | {"cached": True})
    except (OSError, ValueError, TypeError):
        pass  # not checked on this CPU yet, or an unreadable entry: check again
    started = time.perf_counter()
    probe_cosine = probe_agreement(encoder)
    if probe_cosine is None:
        return None
    same = probe_cosine >= SAME_ARITHMETIC
    figures = gate if same else remeasure_gate(encoder)
    check = Int8Check(runtime=encoder.runtime, cpu=cpu["cpu"], int8_features=cpu["int8_features"],
                      same_arithmetic=same, probe_min_cosine=round(probe_cosine, 6),
                      map_loss=figures["map_loss"], top10_overlap=figures["top10_overlap"],
                      max_map_loss=gate["max_map_loss"], min_top10_overlap=gate["min_top10_overlap"],
                      seconds=round(time.perf_counter() - started, 4))
    _store(cache, check)
    return check


def remeasure_gate(encoder) -> dict:
    """The gate set encoded on this CPU and scored against the bundle's fp32 vectors of it."""
    from hbt.export.fidelity import GateVectors, compare_retrieval

    with np.load(encoder.bundle_dir / REFERENCE_FILE) as reference:
        texts, topics = [str(t) for t in reference["texts"]], reference["topics"]
        fp32 = GateVectors(reference["fp32_queries"], reference["fp32_passages"], topics)
    return compare_retrieval(fp32, GateVectors(encoder.encode_queries(texts), encoder.encode_passages(texts), topics))


def require_passed(check: Int8Check, bundle_dir: Path) -> None:
    if not check.passed:
        raise FidelityError(
            f"{bundle_dir}: int8 falls below its gate on this CPU ({check.cpu}: gate-set mAP loss {check.map_loss:.4f}, "
            f"allowed {check.max_map_loss}; top-10 overlap {check.top10_overlap:.3f}, allowed {check.min_top10_overlap}); "
            "its vectors would not be the ones it was tested for. Re-export it on this machine with hbt-export "
            "(the gate then protects what this CPU needs), or use an fp32 bundle (hbt-export --quantize none)"
        )


def _store(path: Path, check: Int8Check) -> None:
    """Write the verdict atomically; a cache that cannot be written only means checking again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(check.to_json(), f)
        os.replace(f.name, path)
    except OSError as e:
        log.debug("could not cache the int8 check in %s: %s", path, e)
