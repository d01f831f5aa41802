"""How many CPUs this process can keep busy: the engines' default thread count.

``os.sched_getaffinity`` counts the CPUs a process may run on, not the time it may use: a Kubernetes
pod with a CPU limit but no exclusive CPUs sees every CPU of its node (64, say) under a quota of 2.
ggml's threads meet at a barrier after every piece of a step, so 64 threads sharing 2 CPUs' worth of
time spend most of each step waiting for the thread the quota paused. The count is therefore cut to
the cgroup's quota, rounded up (llama-server counts the node's cores and has this problem).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup quota allows (v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``), or None when there is none or it cannot be read."""
    try:
        if (root / "cpu.max").exists():
            quota, _, period = (root / "cpu.max").read_text().partition(" ")
            return None if quota == "max" else int(quota) / int(period)
        for v1 in (root / "cpu", root / "cpu,cpuacct"):
            if (v1 / "cpu.cfs_quota_us").exists():
                quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
                return None if quota_us < 0 else quota_us / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on, cut to its cgroup quota's worth (rounded up); at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(root)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else max(1, cpus)
