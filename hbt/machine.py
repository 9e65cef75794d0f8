"""The machine a process runs on: CPU model and features, the cores it may use, and the precision to train in.

Torch-free, so the bench, the export and the runtime can record the CPU too. Each
reader of the system (``/proc/cpuinfo``, the affinity mask, cgroup ``cpu.max``)
is a thin shell around a pure function of text or numbers that tests call with
fake inputs.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# x86: AVX512-BF16 and AMX run bf16 matrix products in hardware; aarch64 lists the same as "bf16".
NATIVE_BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# What autocast to bf16 cost where the CPU emulates it (issue 25, AMD EPYC Zen 3 with AVX2): training
# steps 26-31x slower than fp32, one 384x1536 linear layer forward and backward 36x.
EMULATED_BF16_SLOWDOWN = "about 30x"
PRECISIONS = ("auto", "fp32", "bf16")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The CPU model and feature flags of the first processor in /proc/cpuinfo's text.

    x86 names the model ("model name") and lists "flags"; aarch64 lists "Features"
    and often no name, only implementer and part numbers.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: all cores of a process's CPU match
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    features = frozenset((fields.get("flags") or fields.get("features") or "").split())
    name = fields.get("model name") or fields.get("hardware") or ""
    if "cpu family" in fields:  # virtual machines often report a generic name: keep the numbers that identify it
        name = f"{name or 'x86'} (family {fields['cpu family']}, model {fields.get('model', '?')})"
    elif "cpu part" in fields:
        name = f"{name or 'Arm'} (implementer {fields.get('cpu implementer', '?')}, part {fields['cpu part']})"
    return name, features


def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:  # not Linux
        return "", frozenset()


def cpu_model() -> str:
    """A human-readable CPU name, e.g. 'Intel(R) Xeon(R) Processor (family 6, model 143)'."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown"


def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (e.g. 'avx2', 'avx512_vnni', 'amx_bf16'); empty off Linux."""
    return _cpuinfo()[1]


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD") -> CPUs' worth of time allowed; None: no limit."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not quota:
        return None
    return int(quota) / int(period or 100000)


def cores_allowed(affinity: int, quotas: list[float | None]) -> int:
    """Cores worth using: the affinity mask's size, capped by the tightest cgroup quota (rounded up, at least 1).

    A quota of 1.5 CPUs lets 2 threads run most of the time; rounding down would leave half a core idle.
    """
    limits = [q for q in quotas if q is not None]
    return max(1, min([affinity, *(math.ceil(q) for q in limits)]))


def _cgroup_quotas() -> list[float | None]:
    """The CPU quotas of this process's cgroup and of each ancestor (any of them may cap it), v2 or v1."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:  # not Linux
        return []
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified tree
            root, read = CGROUP_ROOT, lambda d: (d / "cpu.max").read_text()
        elif "cpu" in controllers.split(","):  # v1: quota and period in two files ("-1": none)
            root = CGROUP_ROOT / controllers
            read = lambda d: (d / "cpu.cfs_quota_us").read_text().strip().replace("-1", "max") + " " + \
                (d / "cpu.cfs_period_us").read_text().strip()
        else:
            continue
        directory = root / path.lstrip("/")
        for folder in (directory, *directory.parents):
            if root not in (folder, *folder.parents):
                break
            try:
                quotas.append(parse_cpu_max(read(folder)))
            except (OSError, ValueError):
                continue
    return quotas


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by cgroup CPU quotas (containers, systemd)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores_allowed(affinity, _cgroup_quotas())


@dataclass(frozen=True)
class Threads:
    intra_op: int  # torch's pool for one operator (matrix products): every usable core
    inter_op: int  # torch's pool for independent operators: an encoder is one chain, so one
    loader_workers: int  # processes preparing batches; tokenizing a batch costs milliseconds beside its step


def thread_plan(cores: int, processes: int = 1) -> Threads:
    """How each of ``processes`` training processes on this machine spends its share of the cores: all on the
    model's operators.

    Extra inter-op or loader threads would only compete with the intra-op pool for
    the same cores; the batch is tokenized in the training process between steps.
    """
    return Threads(intra_op=max(1, cores // max(1, processes)), inter_op=1, loader_workers=0)


def native_bf16(features: frozenset[str]) -> bool:
    return bool(features & NATIVE_BF16_FEATURES)


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "fp32" or "bf16": what the run computes in
    reason: str  # why, in a few words, for the first log line and the run's record
    warning: str | None = None  # one line for the user when a request is overruled or runs emulated


def choose_precision(requested: str, features: frozenset[str], gpu_bf16: bool | None = None,
                     force: bool = False) -> PrecisionChoice:
    """The training precision: bf16 only where the hardware computes it natively, unless forced.

    ``features`` are the CPU's flags; ``gpu_bf16`` is None when training on the CPU,
    else whether the GPU supports bf16. ``auto`` takes bf16 where native, else fp32.
    An explicit bf16 on hardware that would emulate it runs fp32 with a warning (the
    emulation costs ~30x on CPU) unless ``force``.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: not one of {', '.join(PRECISIONS)}")
    on_gpu = gpu_bf16 is not None
    native = gpu_bf16 if on_gpu else native_bf16(features)
    where = "this GPU" if on_gpu else "this CPU"
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested")
    if native:
        flags = "GPU support" if on_gpu else ", ".join(sorted(features & NATIVE_BF16_FEATURES))
        return PrecisionChoice("bf16", f"{'auto' if requested == 'auto' else 'requested'}, native here: {flags}")
    if requested == "auto":
        return PrecisionChoice("fp32", f"auto, no native bf16 on {where}")
    hardware = "no native bf16 support" if on_gpu else "no AVX512-BF16 or AMX"
    slowdown = "slower" if on_gpu else f"{EMULATED_BF16_SLOWDOWN} slower"  # measured on CPU only
    if force:
        return PrecisionChoice("bf16", f"forced, emulated on {where}",
                               f"bf16 forced on {where} ({hardware}): it is emulated, expect steps {slowdown} than fp32")
    return PrecisionChoice("fp32", f"bf16 requested, emulated on {where}",
                           f"bf16 on {where} ({hardware}) would be emulated, {slowdown} than fp32: "
                           "training in fp32 (--force-precision to insist)")


def describe() -> dict:
    """The CPU as a run's record carries it: model, flags, usable cores."""
    return {"cpu": cpu_model(), "cpu_features": sorted(cpu_features()), "usable_cores": usable_cores()}
