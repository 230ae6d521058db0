"""The memory budget of a run, and the number of lead shards that keeps each shard inside it.

A shard's peak grows with its activities (validation, the sorted replay and its frames all
hold about the same rows), so the shard count is the input's activities over what one budget
holds, measured on this kind of machine (README, "Bounded memory"). Shards are also kept to
at most `MAX_ACTIVITIES_PER_SHARD`: at 20M activities, four shards ran as fast as one (the
split's cost is won back by sorting smaller frames) in a third of the memory, and with two
shards replayed at once, 4, 8 and 16 shards took the same time, 8 in 1.6 GB where 4 took 2.7.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Share of the machine's (or the memory cgroup's) memory a run budgets when none is set.
DEFAULT_SHARE = 0.6
# Measured peak of one shard: a fixed part (imports, Prefect, Polars' pools) plus a part per
# million activities (typed Parquet, 20 activities per lead; see benchmarks/run.py).
BASE_GB = 0.6
GB_PER_MILLION_ACTIVITIES = 0.26
MAX_ACTIVITIES_PER_SHARD = 2_500_000
# An input read whole, per million activities with their leads: 20M typed activities held
# 1.2 GB; text columns (CSV) hold more, so the estimate leaves room for them.
RAW_GB_PER_MILLION_ACTIVITIES = 0.1
# Below this a shard costs more in fixed work (tasks, part files) than it saves in memory.
MIN_ACTIVITIES_PER_SHARD = 1_000
MAX_SHARDS = 512
_UNLIMITED = 1 << 60


def _cgroup_limit_bytes() -> int | None:
    """The memory limit of this process's cgroup (v2 `memory.max` or v1 `memory.limit_in_bytes`), if any."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
        elif "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
        else:
            continue
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            limits.append(int(text))
    return min(limits) if limits else None


def machine_memory_gb() -> float:
    """Physical memory, or the memory cgroup's limit when it is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit_bytes()
    return min(physical, limit or physical) / 1e9


def budget_gb(configured: float | None) -> float:
    """The run's memory budget: as configured (`[run] memory_gb`, `--memory-gb`), else a share of the machine's."""
    return configured if configured is not None else round(DEFAULT_SHARE * machine_memory_gb(), 2)


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shards_for(activities: int, budget: float, parallel: int = 1) -> int:
    """Lead shards that keep the estimated peak inside the budget, and their size in bounds (at least one).

    `parallel` shards replay at once in one process: they share its fixed part, and each has
    its share of the rest.
    """
    rows_gb = (budget - BASE_GB) / max(1, parallel)
    per_shard = min(rows_gb / GB_PER_MILLION_ACTIVITIES * 1e6, MAX_ACTIVITIES_PER_SHARD)
    if per_shard < MIN_ACTIVITIES_PER_SHARD:
        log.warning("memory budget %.2f GB leaves almost nothing for rows beyond the %.1f GB a shard needs "
                    "anyway; shards of %d activities", budget, BASE_GB, MIN_ACTIVITIES_PER_SHARD)
        per_shard = MIN_ACTIVITIES_PER_SHARD
    return max(1, min(MAX_SHARDS, math.ceil(activities / per_shard)))


def split_fits_in_memory(activities: int, budget: float, parallel: int) -> bool:
    """Whether the whole input, twice (itself and its shards, while it is split), fits the budget beside the shards.

    Beside the input, `parallel` shards of at most `MAX_ACTIVITIES_PER_SHARD` activities replay
    at once while it is still partly held.
    """
    raw = 2 * activities / 1e6 * RAW_GB_PER_MILLION_ACTIVITIES
    shard = min(activities, MAX_ACTIVITIES_PER_SHARD) / 1e6 * GB_PER_MILLION_ACTIVITIES
    return BASE_GB + raw + parallel * shard <= budget
