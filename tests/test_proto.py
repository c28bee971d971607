"""The committed generated code is exactly what the committed .proto files produce."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = (
    "leaderboard_pb2.py",
    "leaderboard_pb2.pyi",
    "leaderboard_pb2_grpc.py",
    "admin_pb2.py",
    "admin_pb2.pyi",
    "admin_pb2_grpc.py",
)


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "proto"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "proto/rankshard/v1/leaderboard.proto"),
            str(ROOT / "proto/rankshard/v1/admin.proto"),
        ],
        check=True,
    )
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "rankshard/v1" / name).read_text() != (ROOT / "proto/rankshard/v1" / name).read_text()
    ]
    assert not stale, f"regenerate with scripts/gen_proto.sh: {stale} differ from the .proto files"


def test_spec_names_are_importable() -> None:
    from rankshard.v1 import admin_pb2, leaderboard_pb2

    assert set(leaderboard_pb2.DESCRIPTOR.services_by_name["Leaderboard"].methods_by_name) == {
        "UpdateScore",
        "BatchUpdateScores",
        "GetRank",
        "GetRanks",
        "GetTop",
        "GetAround",
        "RemoveMember",
    }
    assert set(admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name) == {
        "CreateLeaderboard",
        "GetLeaderboard",
        "ListLeaderboards",
        "GetShardMap",
        "DeleteLeaderboard",
    }
    assert admin_pb2.DeleteLeaderboardRequest.DESCRIPTOR.fields_by_name["name"].number == 1
    assert admin_pb2.DeleteLeaderboardResponse.DESCRIPTOR.fields_by_name["deleted"].number == 1
    assert leaderboard_pb2.UpdateScoreRequest.DESCRIPTOR.fields_by_name["request_id"].number == 4
    assert admin_pb2.Shard.DESCRIPTOR.fields_by_name["state"].number == 6
