"""The router's Prometheus endpoint, scraped over HTTP after known traffic through the real router: counts equal
the calls made, the background metrics follow the nodes and the control plane, and the Grafana dashboard asks
only for metrics the router exports."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from _router import Client, RouterThread, bootstrap
from prometheus_client.parser import text_string_to_metric_families

from rankshard.cli._local import LocalValkey, free_port
from rankshard.router import MetricsListenError
from rankshard.router._tallies import Tally
from rankshard.shard_map import ControlPlane, JobState, JobStep, Node
from rankshard.shard_node import MOVE_STEPS, plan_move
from rankshard.v1 import leaderboard_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "rankshard.json"
WAIT = 20.0

Labels = frozenset[tuple[str, str]]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
"""What a query names of a metric of each type."""


class Scrape:
    """One scrape of a metrics endpoint: every sample by name and labels, and every family's type."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        self.types: dict[str, str] = {}
        self.samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        """The sample of `name` with exactly these labels; None when there is none."""
        return self.samples.get(name, {}).get(frozenset(labels.items()))

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for labels in self.samples.get(name, {})]

    def exported(self) -> set[str]:
        """The names a query can use: a counter's ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``."""
        return {name + s for name, kind in self.types.items() for s in SUFFIXES.get(kind, ("",))}


def wait_scrape(port: int, ready: Callable[[Scrape], bool], what: str) -> Scrape:
    """Scrapes until `ready` holds (a background task's round), failing after `WAIT` seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        scrape = Scrape(port)
        if ready(scrape):
            return scrape
        assert time.monotonic() < deadline, f"no scrape showed {what} within {WAIT:g} s"
        time.sleep(0.05)


class MeteredRouter:
    """A router serving metrics, and a client of it."""

    def __init__(self, dsn: str, **options: object) -> None:
        self.metrics_port = free_port()
        self.thread = RouterThread(dsn, metrics_port=self.metrics_port, **options).start()
        self.client = Client(self.thread.port)

    def scrape(self) -> Scrape:
        return Scrape(self.metrics_port)

    def stop(self) -> None:
        self.client.close()
        self.thread.stop()


@pytest.fixture
def metered(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[MeteredRouter]:
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    router = MeteredRouter(control_plane_dsn, sweep_interval=0.1, sweep_age_ms=600_000, metrics_poll_interval=0.1)
    yield router
    router.stop()


def _fails(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code()  # type: ignore[no-any-return]  # grpc's stubs leave code() untyped


async def _nodes(dsn: str) -> list[Node]:
    async with await ControlPlane.open(dsn) as cp:
        return await cp.list_nodes()


def test_calls_are_counted_by_method_and_code_and_timed(metered: MeteredRouter, control_plane_dsn: str) -> None:
    lb, board = metered.client.lb, "metered"
    metered.client.create(board, boundaries=[10, 20, 30])
    for i in range(7):
        lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id=f"u{i}", score=i * 5))
    for i in range(5):
        lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=f"u{i}"))
    lb.GetTop(pb.GetTopRequest(leaderboard=board, limit=3))
    for _ in range(3):
        assert _fails(lambda: lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id="nobody"))) == (
            grpc.StatusCode.NOT_FOUND
        )
    bad = pb.UpdateScoreRequest(leaderboard=board, user_id="", score=1)
    for _ in range(2):
        assert _fails(lambda: lb.UpdateScore(bad)) == grpc.StatusCode.INVALID_ARGUMENT

    scrape = metered.scrape()
    calls = {
        ("CreateLeaderboard", "OK"): 1,
        ("UpdateScore", "OK"): 7,
        ("UpdateScore", "INVALID_ARGUMENT"): 2,
        ("GetRank", "OK"): 5,
        ("GetRank", "NOT_FOUND"): 3,
        ("GetTop", "OK"): 1,
    }
    counted = {
        (s["method"], s["code"]): scrape.value("rankshard_requests_total", **s)
        for s in scrape.series("rankshard_requests_total")
    }
    assert counted == calls, counted
    for method in {m for m, _ in calls}:
        made = sum(n for (m, _), n in calls.items() if m == method)
        assert scrape.value("rankshard_request_duration_seconds_count", method=method) == made
        assert scrape.value("rankshard_request_duration_seconds_bucket", method=method, le="+Inf") == made
    # Every valid UpdateScore, GetRank and GetTop went through its coalescer: the batches add up to the calls.
    assert scrape.value("rankshard_coalesced_batch_size_sum", kind="update") == 7
    assert scrape.value("rankshard_coalesced_batch_size_sum", kind="rank") == 5 + 3
    assert scrape.value("rankshard_coalesced_batch_size_sum", kind="page") == 1
    for node in (n.id for n in asyncio.run(_nodes(control_plane_dsn))):
        trips = scrape.value("rankshard_node_request_duration_seconds_count", node=node)
        assert trips is not None and trips > 0, f"no round trips to node {node}"
    assert not scrape.series("rankshard_node_errors_total")


def test_node_errors_are_counted_by_node_and_kind(
    control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> None:
    asyncio.run(bootstrap(control_plane_dsn, [node_addresses[0], fresh_valkey.address]))
    router = MeteredRouter(control_plane_dsn)
    try:
        router.client.create("halved", boundaries=[10])
        # Members on both nodes: a page needs the lost node's (an empty shard's known size would do without it).
        for user, score in (("low", 1), ("high", 20)):
            router.client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="halved", user_id=user, score=score))
        lost = next(n.id for n in asyncio.run(_nodes(control_plane_dsn)) if n.address == fresh_valkey.address)
        fresh_valkey.stop()
        assert _fails(lambda: router.client.lb.GetTop(pb.GetTopRequest(leaderboard="halved"))) == (
            grpc.StatusCode.UNAVAILABLE
        )
        errors = router.scrape().samples["rankshard_node_errors_total"]
        assert {dict(labels)["node"] for labels in errors} == {lost}
        assert errors[frozenset({("node", lost), ("kind", "connection")})] >= 1
    finally:
        router.stop()


def test_a_stale_map_is_counted_per_reload(metered: MeteredRouter, node_addresses: list[str]) -> None:
    """A node whose descriptor of a shard moved on answers STALE; the reload is counted (one: a reload that shows the
    same map, with the node in no job's passage, ends the call)."""
    lb, board = metered.client.lb, "fenced"
    metered.client.create(board)
    lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id="a", score=1))
    nodes = [redis.Redis.from_url(f"redis://{a}", decode_responses=True) for a in node_addresses]
    key = f"rs:d:{board}/s1"
    holder = next(n for n in nodes if n.exists(key))
    descriptor = holder.get(key)
    try:
        lower, upper, generation, state = descriptor.split("|")
        holder.set(key, f"{lower}|{upper}|{int(generation) + 1}|{state}")
        assert _fails(lambda: lb.GetTop(pb.GetTopRequest(leaderboard=board))) == grpc.StatusCode.UNAVAILABLE
    finally:
        holder.set(key, descriptor)
        for n in nodes:
            n.close()
    scrape = metered.scrape()
    assert scrape.value("rankshard_stale_reloads_total", board=board) == 1
    assert scrape.value("rankshard_requests_total", method="GetTop", code="UNAVAILABLE") == 1


def test_pending_marks_and_the_sweeper_finishing_them(metered: MeteredRouter, control_plane_dsn: str) -> None:
    """A write abandoned mid-crossing leaves a mark; a second router whose sweeper takes it at once finishes
    it. Each router has its own registry."""
    lb, board = metered.client.lb, "marked"
    metered.client.create(board, boundaries=[10, 20, 30])
    lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id="bob", score=5))
    wait_scrape(metered.metrics_port, lambda s: s.value("rankshard_pending_marks", board=board) == 0, "no marks")

    def crash(step: str) -> None:
        if step == MOVE_STEPS[0]:
            raise RuntimeError("abandoned here")

    metered.thread.hook = crash
    assert _fails(lambda: lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id="bob", score=20))) == (
        grpc.StatusCode.INTERNAL
    )
    metered.thread.hook = None
    wait_scrape(metered.metrics_port, lambda s: s.value("rankshard_pending_marks", board=board) == 1, "one mark")

    sweeper = MeteredRouter(control_plane_dsn, sweep_interval=0.1, sweep_age_ms=0)
    try:
        done = wait_scrape(
            sweeper.metrics_port, lambda s: s.value("rankshard_sweeper_finished_total") == 1, "the move finished"
        )
        assert done.value("rankshard_requests_total", method="UpdateScore", code="INTERNAL") is None
    finally:
        sweeper.stop()
    wait_scrape(metered.metrics_port, lambda s: s.value("rankshard_pending_marks", board=board) == 0, "no marks")
    assert metered.scrape().value("rankshard_sweeper_finished_total") == 0


def test_running_jobs_are_measured_and_their_series_go_when_they_end(
    metered: MeteredRouter, control_plane_dsn: str
) -> None:
    board = "moving"
    metered.client.create(board, boundaries=[10])

    async def plan() -> int:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            shard_map = await cp.shard_map(board)
            source = shard_map.shards[0]
            target_node = next(n.id for n in await cp.list_nodes() if n.id != source.node)
            job = await plan_move(cp, board, source.id, target_node, "test", 60)
            return job.id

    async def advance(job_id: int, end: bool = False) -> None:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            job = await cp.jobs.get(job_id)
            if end:
                await cp.jobs.end(job, "test", JobState.ABORTED, "stopped by the test")
            else:
                await cp.jobs.advance(job, "test", 60, step=JobStep.COPY, copied=40, total=100)

    job_id = asyncio.run(plan())
    labels = {"job": str(job_id), "board": board, "kind": "move"}
    wait_scrape(
        metered.metrics_port,
        lambda s: (
            s.value("rankshard_job_step", **labels, step="PLAN") == 1
            and s.value("rankshard_job_members_total", **labels) == 0
        ),
        "the planned job",
    )
    asyncio.run(advance(job_id))
    scrape = wait_scrape(
        metered.metrics_port,
        lambda s: s.value("rankshard_job_members_copied", **labels) == 40,
        "the job's progress",
    )
    assert scrape.value("rankshard_job_members_total", **labels) == 100
    assert scrape.series("rankshard_job_step") == [{**labels, "step": "COPY"}]
    asyncio.run(advance(job_id, end=True))
    wait_scrape(
        metered.metrics_port,
        lambda s: not any(s.series(m) for m in ("rankshard_job_step", "rankshard_job_members_copied")),
        "the ended job's series gone",
    )


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every query of the dashboard: its panels' and its variables'."""
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return found + [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]


def test_the_dashboard_asks_only_for_metrics_the_router_exports(metered: MeteredRouter) -> None:
    metered.client.create("charted")
    metered.client.lb.GetTop(pb.GetTopRequest(leaderboard="charted"))
    scrape = metered.scrape()
    expressions = _expressions(json.loads(DASHBOARD.read_text()))
    named = {name for expr in expressions for name in re.findall(r"\brankshard_[a-z_]+", expr)}
    assert named and named <= scrape.exported(), f"not exported: {sorted(named - scrape.exported())}"
    # And every metric of the router's has a panel (prometheus_client's ``_created`` gauges, each series' start
    # time, apart).
    ours = {f: kind for f, kind in scrape.types.items() if f.startswith("rankshard_") and not f.endswith("_created")}
    charted = {f for f, kind in ours.items() if any(f + suffix in named for suffix in SUFFIXES.get(kind, ("",)))}
    assert charted == set(ours)


def test_a_tally_counts_a_value_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    tally = Tally((1, 2.5))
    for value in (0.5, 1, 2, 2.5, 3):
        tally.observe(value)
    assert tally.buckets() == [("1.0", 2), ("2.5", 4), ("+Inf", 5)]
    assert tally.sum == 9.0


def test_a_metrics_port_in_use_stops_the_router_at_start_naming_it(
    control_plane_dsn: str, node_addresses: list[str]
) -> None:
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        router = RouterThread(control_plane_dsn, metrics_port=port)
        with pytest.raises(
            MetricsListenError, match=f"cannot serve metrics on 127.0.0.1:{port}: address already in use"
        ):
            router.start()
        router.stop()
