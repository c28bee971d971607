"""The gRPC floor: ``python -m rankshard.benchmarks._echo --port P`` serves `rankshard.v1.Leaderboard` with no storage.

Every call is answered from its request alone (an update's score comes back as its score, rank 1), so
the load generator drives it exactly as it drives a router, and what it costs per call is the cost of
Python gRPC itself on this machine: the ceiling no router written on grpc.aio can pass.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

_OPTIONS = (("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 16 * 1024 * 1024))


class EchoLeaderboard(pb_grpc.LeaderboardServicer):
    async def UpdateScore(
        self, request: pb.UpdateScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateScoreResponse:
        return pb.UpdateScoreResponse(score=request.score, rank=1, applied=True)

    async def BatchUpdateScores(
        self, request: pb.BatchUpdateScoresRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchUpdateScoresResponse:
        return pb.BatchUpdateScoresResponse(
            results=[pb.UpdateResult(score=u.score, rank=1, applied=True) for u in request.updates]
        )

    async def GetRank(self, request: pb.GetRankRequest, context: grpc.aio.ServicerContext) -> pb.GetRankResponse:
        return pb.GetRankResponse(entry=pb.Entry(user_id=request.user_id, score=1, rank=1), total=1, percentile=0.0)

    async def GetTop(self, request: pb.GetTopRequest, context: grpc.aio.ServicerContext) -> pb.GetTopResponse:
        return pb.GetTopResponse(entries=[pb.Entry(user_id="u", score=1, rank=1)] * (request.limit or 10), total=1)

    async def GetAround(self, request: pb.GetAroundRequest, context: grpc.aio.ServicerContext) -> pb.GetAroundResponse:
        entries = [pb.Entry(user_id=request.user_id, score=1, rank=1)] * (2 * (request.radius or 4) + 1)
        return pb.GetAroundResponse(entries=entries, total=1)


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    pb_grpc.add_LeaderboardServicer_to_server(EchoLeaderboard(), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"echo: cannot listen on {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo listening on {host}:{port}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rankshard.benchmarks._echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (match the router's, so the floor is like for like)",
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
