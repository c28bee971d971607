"""``rankshard bench``: the traffic simulation, its baselines, the report and the capacity plan."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

import click
import grpc

from rankshard.benchmarks import PROFILES, print_progress, run_bench
from rankshard.benchmarks._report import capacity_table, headline
from rankshard.router import in_process_routers

from ._direct import direct_batches


@click.command()
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(sorted(PROFILES)),
    default="500m-dau",
    show_default=True,
    help="shape of the run (500m-dau: the benchmark; smoke: about a minute, for tests)",
)
@click.option("--duration", type=click.FloatRange(1, 3600), help="seconds of the traffic simulation [profile's]")
@click.option(
    "--members",
    type=click.IntRange(1000, 50_000_000),
    help="members on the simulated board; memory is measured at min(1M, N) and at N [profile's]",
)
@click.option("--dau", type=click.IntRange(1), help="daily active users of the modelled game [500,000,000]")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="folder for result.json, report.md and the plots",
)
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--full",
    is_flag=True,
    help="the long run: memory also at 5,000,000 members (a fill of about two minutes), 5 rounds, a 60 s "
    "simulation, the latency probes, router processes on one port and the direct batch baseline",
)
def bench(
    profile_name: str,
    duration: float | None,
    members: int | None,
    dau: int | None,
    out_dir: Path,
    seed: int,
    full: bool,
) -> None:
    """Simulate a game's leaderboard traffic against a local cluster, side by side with a gRPC echo
    server and a bare sorted set on the same nodes, and write a report with node CPU per call, a
    shard-count series and a capacity plan for the full-scale model (beside the same plan for a bare
    sorted-set design).

    Starts its own PostgreSQL, nodes, routers and echo server in a temporary folder and stops them.
    The default run takes about four minutes and measures memory at 1,000,000 members; --full adds
    the 5,000,000-member fill, more rounds and the extra phases.

    \b
    Examples:
      rankshard bench
      rankshard bench --full
      rankshard bench --profile smoke --out /tmp/bench
    """
    profile = PROFILES[profile_name]
    if full:
        profile = profile.full()
    if duration is not None:
        profile = profile.scaled(duration=duration)
    if members is not None:
        profile = profile.scaled(memory_at=tuple(sorted({min(1_000_000, members), members})))
    if dau is not None:
        # The board holds every player who scores on it: as many members as daily players, by default.
        profile = profile.scaled(model=replace(profile.model, dau=dau, board_members=dau))
    command = "rankshard " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result, paths = run_bench(
            profile,
            out_dir,
            command=command,
            progress=print_progress,
            seed=seed,
            direct=direct_batches,
            routers=in_process_routers,
        )
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(f"bench failed: {exc}") from exc
    except grpc.RpcError as exc:
        raise click.ClickException(f"bench failed: a call was refused: {exc.code().name}: {exc.details()}") from exc
    click.echo(headline(result))
    click.echo()
    click.echo(capacity_table(result))
    click.echo(f"\nwrote {', '.join(str(p) for p in paths)}")
