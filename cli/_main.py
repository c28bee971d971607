"""``rankshard``: the SRE and newcomer command line (docs/operations.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any

import click

from rankshard.shard_map import LOCAL_CLUSTER, RANKSHARD

from ._bench import bench
from ._cluster import ClaimRefused, GaveUp, LocalCluster, signals_caught, supervise_until_signal
from ._demo import demo
from ._doctor import check, repair
from ._import import import_cmd
from ._jobs import jobs, merge, move, split
from ._manage import init, leaderboards, parse_boundaries, shards
from ._nodes import nodes
from ._options import environment_settings, setting_options, settings_of, with_options
from ._rebalance import drain, rebalance, undrain
from ._secrets import TOKENS_FILE, TlsFiles
from ._top import top


class _OneLineError(click.ClickException):
    """An error already put in its one line: shown as it is, on stderr."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, file=file, err=True)


class _OneLineUsageError(_OneLineError):
    exit_code = click.UsageError.exit_code  # 2, as click's: scripts tell a bad call from a failed one


class _OneLineInterrupted(_OneLineError):
    exit_code = 130  # a job stopped by Ctrl-C: as a shell reports a command ended by SIGINT


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """Turns any click error into one line: ``rankshard nodes add: missing argument 'ADDRESS' (see
    rankshard nodes add --help)`` for usage errors (exit status 2, as click's), ``rankshard: MESSAGE``
    for the rest (docs/operations.md: errors are one line on stderr)."""
    try:
        yield
    except (_OneLineError, click.exceptions.NoArgsIsHelpError):  # the latter is `rankshard nodes`: help
        raise
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "rankshard"
        raise _OneLineUsageError(f"{path}: {_as_clause(exc.format_message())} (see {path} --help)") from exc
    except click.ClickException as exc:
        one_line = _OneLineInterrupted if exc.exit_code == _OneLineInterrupted.exit_code else _OneLineError
        raise one_line(f"rankshard: {_flat(exc.format_message())}") from exc


def _flat(message: str) -> str:
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _as_clause(message: str) -> str:
    """One of click's sentences ("Missing argument 'ADDRESS'.") as a clause after a colon."""
    text = _flat(message).rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


class _Rankshard(click.Group):
    """The root of the command tree: every error below it, in parsing or in a command, is one line."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with _one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line():
            return super().invoke(ctx)


@click.group(name="rankshard", cls=_Rankshard, context_settings={"help_option_names": ["-h", "--help"]})
@setting_options(RANKSHARD)
@click.pass_context
def main(ctx: click.Context, /, **given: Any) -> None:
    """rankshard: a sharded leaderboard cluster.

    \b
    Start here:
      rankshard demo                 a local cluster, simulated traffic, top 10, ranks
      rankshard cluster up           a local cluster in the foreground (Ctrl-C stops it)
      rankshard shards list -l global
      rankshard rebalance -l global --dry-run

    A control plane elsewhere (--control-plane DSN) is initialised once with
    `rankshard init`; no other command creates or changes its schema. Without
    one, commands use the local cluster's in --data-dir. Every option here
    can be set in the environment instead: RANKSHARD_ and its name, as in
    RANKSHARD_CONTROL_PLANE (docs/operations.md lists every setting).
    """
    ctx.obj = with_options(environment_settings(), given)


@click.group()
def cluster() -> None:
    """Run a local cluster."""


@cluster.command("up")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 64), help="data nodes (Valkey/Redis)")
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 256), help="shards of board `global`")
@click.option(
    "--routers", default=1, show_default=True, type=click.IntRange(1, 64), help="router processes on one port"
)
@click.option("--port", default=50051, show_default=True, type=click.IntRange(1, 65535), help="router port")
@click.option("--boundaries", help="cut points of board `global` (default: spread for a skewed distribution)")
@click.option("--auth", is_flag=True, help="routers require the bearer tokens of --data-dir's tokens.json (made once)")
@click.option("--tls", is_flag=True, help="routers serve TLS with a certificate of --data-dir's own CA (made once)")
@setting_options(LOCAL_CLUSTER)
@click.pass_context
def up(
    ctx: click.Context,
    /,
    nodes: int,
    shards: int,
    routers: int,
    port: int,
    boundaries: str | None,
    auth: bool,
    tls: bool,
    **given: Any,
) -> None:
    """Start PostgreSQL, the nodes and the routers in the foreground, until SIGINT or SIGTERM.

    A process that dies is restarted on its port and data; one that keeps dying stops the
    cluster. Data lives in --data-dir and survives a stop and start. Creates board `global`
    (descending, increment) if absent. The routers take their settings from the environment
    (RANKSHARD_SWEEP_INTERVAL and so on) and from rankshard's options. With --auth every
    call needs a token of tokens.json (role admin: every service; game: Leaderboard);
    with --tls clients trust tls/ca.pem. The CLI finds both in --data-dir. Each router serves
    Prometheus metrics on a port of its own: printed, and kept in cluster.json (metrics_ports).

    \b
    Examples:
      rankshard cluster up
      rankshard --data-dir /tmp/rs cluster up --nodes 3 --shards 8 --routers 2
      rankshard cluster up --port 50061 --boundaries 100,1000,10000
      rankshard cluster up --no-node-appendonly --restart-max-deaths 10
      rankshard cluster up --auth --tls
    """
    cuts = parse_boundaries(boundaries) if boundaries else None
    settings = with_options(settings_of(ctx), given)
    local = LocalCluster(
        settings.data_dir,
        nodes=nodes,
        shards=shards,
        routers=routers,
        port=port,
        boundaries=cuts,
        settings=settings,
        auth=auth,
        tls=tls,
        metrics=True,
    )
    with signals_caught() as received:
        try:
            local.start()
        except ClaimRefused as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            raise click.ClickException(f"cluster did not start: {exc}") from exc
        try:
            click.echo(f"rankshard: control plane {local.control_plane}")
            click.echo(f"rankshard: nodes {', '.join(n.address for n in local.nodes)}")
            if preloaded := sorted({n.preload for n in local.nodes if n.preload}):
                click.echo(f"rankshard: nodes run on {', '.join(preloaded)} (their server's own malloc is libc's)")
            for line in _secured_by(local):
                click.echo(line)
            click.echo(f"rankshard: router listening on {local.address}")
            metrics = ", ".join(f"http://{r.metrics_address}/metrics" for r in local.routers)
            click.echo(f"rankshard: metrics {metrics}")
            outcome = supervise_until_signal(local, click.echo, received)
            if isinstance(outcome, GaveUp):
                click.echo(f"rankshard: {outcome.name} keeps dying; stopping. The last lines of {outcome.log_path}:")
                for line in outcome.log_lines():
                    click.echo(f"  {line}")
            else:
                click.echo(f"rankshard: stopping ({outcome})")
        finally:
            local.stop()
    if isinstance(outcome, GaveUp):
        raise click.ClickException(str(outcome))


def _secured_by(local: LocalCluster) -> list[str]:
    """What the routers require of clients, and where a client finds the tokens and the CA to trust."""
    lines = [f"rankshard: routers require a token of {local.data_dir / TOKENS_FILE}"] if local.auth else []
    return lines + (
        [f"rankshard: routers serve TLS; clients trust {TlsFiles.of(local.data_dir).ca}"] if local.tls else []
    )


main.add_command(init)
main.add_command(cluster)
main.add_command(demo)
leaderboards.add_command(import_cmd)
leaderboards.add_command(top)
main.add_command(leaderboards)
for command in (split, merge, move):
    shards.add_command(command)
main.add_command(shards)
nodes.add_command(drain)
nodes.add_command(undrain)
main.add_command(jobs)
main.add_command(nodes)
main.add_command(rebalance)
main.add_command(check)
main.add_command(repair)
main.add_command(bench)
