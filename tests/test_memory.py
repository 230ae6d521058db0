"""The memory budget: the cgroup's limit is respected, and the shard count keeps each shard inside the budget."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.memory import (
    BASE_GB,
    DEFAULT_SHARE,
    GB_PER_MILLION_ACTIVITIES,
    MAX_ACTIVITIES_PER_SHARD,
    MAX_SHARDS,
    RAW_GB_PER_MILLION_ACTIVITIES,
    budget_gb,
    machine_memory_gb,
    shards_for,
    split_fits_in_memory,
)

CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def test_shards_keep_each_one_inside_the_budget_and_its_size_bounded() -> None:
    assert shards_for(10_000, 16) == 1
    assert shards_for(MAX_ACTIVITIES_PER_SHARD, 16) == 1
    assert shards_for(MAX_ACTIVITIES_PER_SHARD + 1, 16) == 2
    assert shards_for(20_000_000, 16) == 8
    # A budget of 1.2 GB holds (1.2 - base) / per-million million activities per shard.
    per_shard = (1.2 - BASE_GB) / GB_PER_MILLION_ACTIVITIES * 1e6
    assert shards_for(40_000_000, 1.2) == -(-40_000_000 // int(per_shard))
    for activities in (1, 999_999, 7_000_000, 100_000_000):
        for budget in (0.7, 1.0, 4.8, 16.0):
            for parallel in (1, 2, 3):  # shards replayed at once share the fixed part, not the rows
                shards = shards_for(activities, budget, parallel)
                at_once = min(parallel, shards)
                peak = BASE_GB + at_once * GB_PER_MILLION_ACTIVITIES * activities / shards / 1e6
                assert shards == MAX_SHARDS or peak <= budget + 1e-9
                assert activities / shards <= MAX_ACTIVITIES_PER_SHARD
    assert shards_for(20_000_000, 1.6, 2) == 11  # (1.6 - 0.6) / 2 GB: 1.9M activities each
    assert shards_for(1_000_000, BASE_GB) == MAX_SHARDS  # nothing left for rows: as many shards as allowed


def test_an_input_is_split_in_memory_only_when_it_fits_twice_beside_the_shards_replaying() -> None:
    # 20M activities: 4 GB for the input and its shards, 0.65 GB for each of two shards replaying.
    need = BASE_GB + 2 * 20 * RAW_GB_PER_MILLION_ACTIVITIES + 2 * 2.5 * GB_PER_MILLION_ACTIVITIES
    assert split_fits_in_memory(20_000_000, need, 2)
    assert not split_fits_in_memory(20_000_000, need - 0.01, 2)
    assert split_fits_in_memory(20_000_000, 15, 2)  # this machine's default budget
    assert not split_fits_in_memory(100_000_000, 0.6 * 8, 2)  # 5M leads in an 8 GiB cgroup: shard files
    assert split_fits_in_memory(0, BASE_GB, 1)


def test_the_budget_is_as_configured_else_a_share_of_the_machine() -> None:
    assert budget_gb(3.5) == 3.5
    assert budget_gb(None) == pytest.approx(DEFAULT_SHARE * machine_memory_gb(), abs=0.01)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    assert 0 < machine_memory_gb() <= physical


@pytest.mark.skipif(not os.access(CGROUP_V1, os.W_OK), reason="needs a writable cgroup v1 memory hierarchy (root)")
def test_a_memory_cgroup_limit_lowers_the_machine_memory() -> None:
    """A process inside a 3 GiB memory cgroup sees 3 GiB, not the machine's memory."""
    group = CGROUP_V1 / f"funnel-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(3 * 2**30))
        code = "from flows.memory import machine_memory_gb; print(machine_memory_gb())"
        out = subprocess.run(["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", sys.executable, "-c",
                              code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout
        assert float(out) == pytest.approx(3 * 2**30 / 1e9)
    finally:
        group.rmdir()
