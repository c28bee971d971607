"""The `--dry-run` text of a rebalance plan: deterministic (same plan, same text), members with thousands
separators, scores as given, ∞ for an unbounded end.

    target 500,000 ±10%   n1 612,004 (+22%)  n2 401,118 (-20%)  n3 486,878 (-3%)
    1. split s3 [1200,∞) at 4810 on n1 -> s3 98,002 | s9 112,004
    2. move  s9 n1 -> n2   112,004 members
    after    n1 499,998 (0%)  n2 513,122 (+3%)  n3 486,878 (-3%)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._plan_steps import Move, Piece, Split, Step, apply_step, pieces_of

if TYPE_CHECKING:
    from ._planner import NodeLoad, Plan


def percent(load: int, target: float) -> str:
    """How far `load` is from `target`, as ``+22%``, ``0%``, ``-3%``; ``drain`` for a target of 0."""
    if target <= 0:
        return "drain"
    off = round(100 * (load - target) / target)
    return f"{off:+d}%" if off else "0%"


def format_plan(plan: Plan) -> str:
    lines = [_header(plan)]
    pieces = pieces_of(plan.stats)
    for number, step in enumerate(plan.steps, start=1):
        lines.append(f"{number}. {_step_text(pieces, step)}")
        pieces = apply_step(pieces, step)
    if plan.steps:
        lines.append("after    " + _loads(plan.loads, after=True, with_targets=not _one_target(plan.loads)))
    if plan.reason is not None:
        lines.append(plan.reason)
    return "\n".join(lines) + "\n"


def _one_target(loads: Sequence[NodeLoad]) -> float | None:
    """The target every receiving node shares (equal weights), else None."""
    targets = {round(load.target) for load in loads if not load.draining}
    return targets.pop() if len(targets) == 1 else None


def _header(plan: Plan) -> str:
    pct = f"±{plan.threshold_pct:g}%"
    target = _one_target(plan.loads)
    title = f"target {round(target):,} {pct}" if target is not None else f"targets by weight {pct}"
    return f"{title}   {_loads(plan.loads, after=False, with_targets=target is None)}"


def _loads(loads: Sequence[NodeLoad], *, after: bool, with_targets: bool) -> str:
    parts = []
    for load in loads:
        members = load.after if after else load.before
        of = f" of {round(load.target):,}" if with_targets and not load.draining else ""
        parts.append(f"{load.node} {members:,}{of} ({percent(members, load.target)})")
    return "  ".join(parts)


def _step_text(pieces: Sequence[Piece], step: Step) -> str:
    piece = next(p for p in pieces if p.id == step.shard)
    if isinstance(step, Split):
        return (
            f"split {step.shard} {_range(piece)} at {step.at} on {piece.node} -> "
            f"{step.shard} {step.left_members:,} | {step.new_shard} {step.right_members:,}"
        )
    if isinstance(step, Move):
        return f"move  {step.shard} {step.source} -> {step.target}   {step.members:,} members"
    return f"merge {step.shard} + {step.with_} on {piece.node} -> {step.shard} {step.members:,} members"


def _range(piece: Piece) -> str:
    lower = "(-∞" if piece.lower is None else f"[{piece.lower}"
    upper = "∞)" if piece.upper is None else f"{piece.upper})"
    return f"{lower},{upper}"
