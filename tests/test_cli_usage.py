"""Usage errors anywhere in the `rankshard` command tree: one line on stderr, exit status 2 (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rankshard.cli import main


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["nodes", "add"], "rankshard nodes add: missing argument 'ADDRESS' (see rankshard nodes add --help)"),
        (
            ["nodes", "list", "--bogus"],
            "rankshard nodes list: no such option '--bogus' (see rankshard nodes list --help)",
        ),
        (
            ["cluster", "up", "--port", "abc"],
            (
                "rankshard cluster up: invalid value for '--port': 'abc' is not a valid integer range"
                " (see rankshard cluster up --help)"
            ),
        ),
        (
            ["cluster", "up", "--port", "70000"],
            (
                "rankshard cluster up: invalid value for '--port': 70000 is not in the range 1<=x<=65535"
                " (see rankshard cluster up --help)"
            ),
        ),
        (
            ["nodes", "add", "nonsense"],
            (
                "rankshard nodes add: invalid value for ADDRESS: 'nonsense' is not host:port"
                " (see rankshard nodes add --help)"
            ),
        ),
        (
            ["nodes", "add", "127.0.0.1:99999"],
            (
                "rankshard nodes add: invalid value for ADDRESS: '127.0.0.1:99999' is not host:port"
                " (see rankshard nodes add --help)"
            ),
        ),
        (["--bogus", "nodes", "list"], "rankshard: no such option '--bogus' (see rankshard --help)"),
        (["nodez"], "rankshard: no such command 'nodez'. Did you mean 'nodes'? (see rankshard --help)"),
        (
            ["leaderboards", "create", "x", "--order", "up"],
            (
                "rankshard leaderboards create: invalid value for '--order': 'up' is not one of 'desc', 'asc'"
                " (see rankshard leaderboards create --help)"
            ),
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(args: list[str], line: str) -> None:
    result = CliRunner().invoke(main, args, env={"RANKSHARD_CONTROL_PLANE": ""})
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def test_other_errors_are_one_line_too(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path), "nodes", "list"], env={"RANKSHARD_CONTROL_PLANE": ""}
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        (
            "rankshard: no control plane: pass --control-plane DSN (or set RANKSHARD_CONTROL_PLANE), "
            f"or start a local cluster with `rankshard --data-dir {tmp_path} cluster up`"
        )
    ]
