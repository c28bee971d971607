#!/usr/bin/env bash
# Regenerates the committed Python code of proto/rankshard/v1/*.proto (tests/test_proto.py checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-proto}"
python -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/rankshard/v1/leaderboard.proto proto/rankshard/v1/admin.proto
