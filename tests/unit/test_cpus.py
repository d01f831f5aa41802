"""The engines' default thread count: the CPUs this process may run on, cut to its cgroup CPU quota
(backends/cpus.py), read from cgroup files laid out as the kernel does."""

from __future__ import annotations

import math
import os

import pytest

from lmgate.backends.cpus import cpu_quota, usable_cpus
from lmgate.backends.llamacpp.config import LlamaCppConfig

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("content", "quota"), [("150000 100000\n", 1.5), ("max 100000\n", None)])
def test_cgroup_v2_cpu_max(tmp_path, content, quota):
    (tmp_path / "cpu.max").write_text(content)
    assert cpu_quota(tmp_path) == quota


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(tmp_path, controller):
    v1 = tmp_path / controller
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("250000\n")
    assert cpu_quota(tmp_path) == 2.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cpu_quota(tmp_path) is None


def test_no_or_unreadable_cgroup_files_mean_no_quota(tmp_path):
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("garbage")
    assert cpu_quota(tmp_path) is None


def test_a_quota_below_the_cpus_cuts_the_thread_count_rounding_up(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(AFFINITY + 0.5) * 100000:.0f} 100000\n")  # more than the CPUs
    assert usable_cpus(tmp_path) == AFFINITY
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == AFFINITY


def test_the_llamacpp_default_threads_follow_this_machines_quota(tmp_path):
    quota = cpu_quota()
    expected = AFFINITY if quota is None else max(1, min(AFFINITY, math.ceil(quota)))
    assert LlamaCppConfig(gguf=tmp_path / "m.gguf").n_threads == expected
