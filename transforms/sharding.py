"""How leads are split into shards, and the per-shard numbers that add up across shards."""

from __future__ import annotations

import polars as pl

# A fixed seed: the same lead_id lands in the same shard in every process and on every machine
# running the same Polars version.
_SEED = 0x5EED


def shard_of(lead_id: pl.Expr, shards: int) -> pl.Expr:
    """The shard (0..shards-1) of each lead, from a stable 64-bit hash of its (normalised) id."""
    return (lead_id.hash(_SEED) % shards).cast(pl.UInt32).alias("_shard")


def reached_counts(transitions: pl.DataFrame, stages: int) -> list[int]:
    """Leads that reached each stage rank or beyond: additive over disjoint sets of leads."""
    return [transitions.filter(pl.col("to_rank") >= k)["lead_key"].n_unique() for k in range(stages)]
