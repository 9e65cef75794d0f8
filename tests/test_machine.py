"""The machine record and the choices made from it: CPU flags, usable cores, training precision (fake feature sets)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbt.machine import (EMULATED_BF16_SLOWDOWN, NATIVE_BF16_FEATURES, choose_precision, cores_allowed,
                         parse_cpu_max, parse_cpuinfo, thread_plan, usable_cores)

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
ZEN3 = frozenset({"avx2", "fma", "sse4_2"})  # the machine: no AVX-512, no native bf16
GRAVITON3 = frozenset({"fp", "asimd", "sve", "i8mm", "bf16"})

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu avx2 fma sse4_2

processor\t: 1
model name\t: something else
flags\t\t: avx512_bf16
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd sve i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_cpuinfo_gives_the_first_processors_name_and_flags():
    assert parse_cpuinfo(X86_CPUINFO) == ("AMD EPYC 7B13 (family 25, model 1)", ZEN3 | {"fpu"})
    assert parse_cpuinfo(ARM_CPUINFO) == ("Arm (implementer 0x41, part 0xd40)", GRAVITON3)
    assert parse_cpuinfo("") == ("", frozenset())


def test_cgroup_cpu_max():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("50000 100000") == 0.5


@given(st.integers(1, 512), st.lists(st.one_of(st.none(), st.floats(0.01, 1024)), max_size=4))
def test_cores_allowed_is_the_affinity_capped_by_every_quota(affinity, quotas):
    cores = cores_allowed(affinity, quotas)
    assert 1 <= cores <= affinity
    assert all(cores <= max(1, math.ceil(q)) for q in quotas if q is not None)
    if all(q is None or q >= affinity for q in quotas):
        assert cores == affinity  # no cap below the mask: every core of the mask


def test_cores_allowed_examples():
    assert cores_allowed(8, [None, 1.5]) == 2  # a quota of 1.5 CPUs: two threads
    assert cores_allowed(2, [None]) == 2
    assert cores_allowed(64, [4.0, None, 16.0]) == 4  # the tightest ancestor wins


def test_usable_cores_on_this_machine_is_within_the_affinity_mask():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_thread_plan_gives_every_core_to_the_operators():
    assert thread_plan(2) == thread_plan(2) and thread_plan(2).intra_op == 2 and thread_plan(0).intra_op == 1
    assert thread_plan(16).inter_op == 1 and thread_plan(16).loader_workers == 0
    assert thread_plan(16, processes=4).intra_op == 4 and thread_plan(2, processes=4).intra_op == 1  # torchrun on one host


@pytest.mark.parametrize("requested, features, gpu, force, precision, warns", [
    ("auto", SAPPHIRE_RAPIDS, None, False, "bf16", False),
    ("auto", GRAVITON3, None, False, "bf16", False),
    ("auto", ZEN3, None, False, "fp32", False),  # the 36x case cannot recur silently
    ("bf16", SAPPHIRE_RAPIDS, None, False, "bf16", False),
    ("bf16", ZEN3, None, False, "fp32", True),
    ("bf16", ZEN3, None, True, "bf16", True),
    ("fp32", SAPPHIRE_RAPIDS, None, False, "fp32", False),
    ("auto", ZEN3, True, False, "bf16", False),  # a bf16 GPU on a host without it
    ("auto", SAPPHIRE_RAPIDS, False, False, "fp32", False),  # training on a GPU without bf16: the CPU's flags do not count
    ("bf16", ZEN3, False, False, "fp32", True),
])
def test_precision_choice(requested, features, gpu, force, precision, warns):
    choice = choose_precision(requested, features, gpu, force)
    assert choice.precision == precision
    assert (choice.warning is not None) == warns
    if warns:
        assert "\n" not in choice.warning and "emulated" in choice.warning


def test_the_emulation_warning_names_the_slowdown_and_the_way_out():
    warning = choose_precision("bf16", ZEN3).warning
    assert EMULATED_BF16_SLOWDOWN in warning and "fp32" in warning and "--force-precision" in warning


@given(st.sampled_from(["auto", "fp32", "bf16"]), st.frozensets(st.sampled_from(sorted(SAPPHIRE_RAPIDS | ZEN3 | GRAVITON3))),
       st.booleans())
def test_bf16_runs_emulated_only_when_forced_and_then_says_so(requested, features, force):
    choice = choose_precision(requested, features, None, force)
    native = bool(features & NATIVE_BF16_FEATURES)
    if choice.precision == "bf16" and not native:
        assert force and requested == "bf16" and choice.warning
    if requested == "auto":
        assert choice.precision == ("bf16" if native else "fp32") and choice.warning is None


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        choose_precision("fp16", ZEN3)


def test_the_machine_module_imports_no_torch():
    code = "import sys, hbt.machine as m; m.describe(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
