"""Scores per group of questions (a benchmark's splits, categories, question types)."""

from __future__ import annotations

from collections import defaultdict


def share(hits: list[bool]) -> float:
    return sum(hits) / max(1, len(hits))


def group_shares(prefix: str, right: list[bool], groups: list[str | None]) -> dict[str, float]:
    """{"<prefix>_<group>": the share right within it}, groups in sorted order; a question of no group (None, "")
    counts in none."""
    members: dict[str, list[bool]] = defaultdict(list)
    for hit, group in zip(right, groups):
        if group:
            members[group].append(hit)
    return {f"{prefix}_{group}": share(hits) for group, hits in sorted(members.items())}
