"""`rankshard init`, and every other command on a control plane without rankshard's schema (real PostgreSQL)."""

from __future__ import annotations

import json
from typing import LiteralString, cast

import psycopg
import pytest
from click.testing import CliRunner, Result

from rankshard.cli import main
from rankshard.cli._local import free_port
from rankshard.shard_map._migrate import load_migrations


def _invoke(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--control-plane", dsn, *args])


def _relations(dsn: str) -> list[str]:
    """Every table, sequence, view or index outside PostgreSQL's own schemas."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            " ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


@pytest.mark.parametrize(
    "args",
    [
        ["nodes", "list"],
        ["nodes", "list", "--json"],
        ["leaderboards", "list"],
        ["shards", "list", "--leaderboard", "global"],
        ["check"],
        ["repair"],
        ["nodes", "add", "127.0.0.1:6379"],
        ["nodes", "remove", "n1"],
        ["leaderboards", "create", "weekly"],
    ],
)
def test_commands_on_a_database_without_the_schema_say_so_and_create_nothing(
    control_plane_dsn: str, args: list[str]
) -> None:
    result = _invoke(control_plane_dsn, *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    where = control_plane_dsn.rsplit("@", 1)[1]
    assert result.stderr.splitlines() == [
        (
            f"rankshard: the control plane at {where} has no rankshard schema; "
            "run `rankshard init` or `rankshard cluster up`"
        )
    ]
    assert _relations(control_plane_dsn) == []


def test_init_creates_the_schema_once_and_empty_lists_print_their_header(control_plane_dsn: str) -> None:
    versions = [m.version for m in load_migrations()]
    first = _invoke(control_plane_dsn, "init")
    assert first.exit_code == 0, first.output
    assert "initialised the control plane" in first.stdout
    assert f"migrations {', '.join(map(str, versions))}" in first.stdout
    assert {"boards", "nodes", "schema_migrations", "shards"} <= set(_relations(control_plane_dsn))
    again = _invoke(control_plane_dsn, "init")
    assert again.exit_code == 0, again.output
    assert f"is up to date (schema version {versions[-1]})" in again.stdout

    for group, header in (("nodes", ["ID", "ADDRESS", "STATE"]), ("leaderboards", ["NAME", "ORDER", "OPERATOR"])):
        listed = _invoke(control_plane_dsn, group, "list")
        assert listed.exit_code == 0, listed.output
        assert listed.stdout.split()[:3] == header and len(listed.stdout.splitlines()) == 1
        as_json = _invoke(control_plane_dsn, group, "list", "--json")
        assert as_json.exit_code == 0, as_json.output
        assert json.loads(as_json.stdout) == []


def test_an_older_schema_is_named_and_init_upgrades_it(control_plane_dsn: str) -> None:
    first, *later = load_migrations()
    missing = ", ".join(str(m.version) for m in later)
    with psycopg.connect(control_plane_dsn) as conn:  # what an earlier release left
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(cast(LiteralString, first.sql))
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (first.version, first.name))

    result = _invoke(control_plane_dsn, "nodes", "list")
    assert result.exit_code == 1, result.output
    assert f"schema migration(s) {missing} not applied; run `rankshard init`" in result.stderr
    upgraded = _invoke(control_plane_dsn, "init")
    assert f"applied schema migrations {missing}" in upgraded.stdout
    assert _invoke(control_plane_dsn, "nodes", "list").exit_code == 0


def test_init_on_a_server_that_does_not_answer_is_one_line() -> None:
    result = _invoke(f"postgresql://rankshard@127.0.0.1:{free_port()}/rankshard", "init")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "control plane" in result.stderr
