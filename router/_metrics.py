"""The router's Prometheus metrics: one registry per router, served over HTTP on `Settings.metrics_port`.

docs/operations.md ("Metrics") lists every metric with its labels. What is updated on every call or node round
trip lives in `_tallies` (no lock per update); the rest are prometheus_client's own metrics. A router without a
metrics port has no `RouterMetrics` at all, and every hook that feeds it is then a single None check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from rankshard.shard_map import ControlPlane, Job, RankshardError

from ._tallies import CounterTallies, HistogramTallies

log = logging.getLogger("rankshard.router")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a call answered from a cached map takes about a millisecond; deadlines are 10 s by default."""
_NODE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: a round trip to a node on the same network is well under a millisecond; its timeout is 2 s."""
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
"""Calls per coalesced batch (at most 1,000: `Coalescer`'s `max_batch`)."""

_JOB_LABELS = ("job", "board", "kind")


class RouterMetrics:
    """Every metric of one router, in a registry of its own (several routers may run in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = CounterTallies(
            "rankshard_requests", "Calls answered, by method and gRPC status code", ("method", "code")
        )
        self._durations = HistogramTallies(
            "rankshard_request_duration_seconds",
            "Time from a call's arrival in its handler to its answer, by method",
            ("method",),
            _LATENCY_BUCKETS,
        )
        self._batches = HistogramTallies(
            "rankshard_coalesced_batch_size",
            "Calls per coalesced batch, by kind (update: UpdateScore, rank: GetRank, page: GetTop, window: GetAround)",
            ("kind",),
            _BATCH_BUCKETS,
        )
        self._node_durations = HistogramTallies(
            "rankshard_node_request_duration_seconds",
            "Round trips to a data node (one pipelined send and its replies, or its failure), by node id",
            ("node",),
            _NODE_BUCKETS,
        )
        for tallies in (self._requests, self._durations, self._batches, self._node_durations):
            r.register(tallies)
        self._node_errors = Counter(
            "rankshard_node_errors",
            "Failed node commands, by node id and kind of failure",
            ("node", "kind"),
            registry=r,
        )
        self._stale = Counter(
            "rankshard_stale_reloads", "Board maps reloaded because a node answered STALE", ("board",), registry=r
        )
        self._finished = Counter(
            "rankshard_sweeper_finished", "Abandoned writes and moves the sweeper finished", registry=r
        )
        self._pending = Gauge(
            "rankshard_pending_marks",
            "Members with a write, move or removal committed on the index and not yet confirmed in the shards, "
            "as of the sweeper's last round",
            ("board",),
            registry=r,
        )
        self._copied = Gauge(
            "rankshard_job_members_copied", "Members a running job has copied", _JOB_LABELS, registry=r
        )
        self._total = Gauge("rankshard_job_members_total", "Members a running job has to copy", _JOB_LABELS, registry=r)
        self._step = Gauge(
            "rankshard_job_step", "1 for the step a running job is at", (*_JOB_LABELS, "step"), registry=r
        )
        self._boards: set[str] = set()
        """Boards with a pending-marks series."""
        self._jobs: dict[int, tuple[tuple[str, str, str], str]] = {}
        """Running jobs with series: their labels and step."""

    def call_done(self, method: str, code: str, seconds: float) -> None:
        """A call of `method` answered with status `code` (its name: ``OK``, ``NOT_FOUND``) after `seconds`."""
        counts, key = self._requests.counts, (method, code)
        counts[key] = counts.get(key, 0) + 1
        self._durations.series(method).observe(seconds)

    def batch_observer(self, kind: str) -> Callable[[int], None]:
        """What a `Coalescer` of `kind` calls with each batch's size."""
        return self._batches.series(kind).observe

    def round_trip(self, node_id: str, seconds: float) -> None:
        """`NodeObserver.round_trip`."""
        self._node_durations.series(node_id).observe(seconds)

    def failed(self, node_id: str, kind: str) -> None:
        """`NodeObserver.failed`."""
        self._node_errors.labels(node_id, kind).inc()

    def stale_reload(self, board: str) -> None:
        self._stale.labels(board).inc()

    def sweeper_finished(self, count: int) -> None:
        self._finished.inc(count)

    def pending_marks(self, counts: Mapping[str, int], every_board: Collection[str] | None = None) -> None:
        """Sets the gauge of each board in `counts`. `every_board`: the names of all the boards there are; the
        series of any other board (deleted since) go."""
        for board, count in counts.items():
            self._pending.labels(board).set(count)
        self._boards |= counts.keys()
        if every_board is not None:
            for gone in self._boards - set(every_board):
                self._pending.remove(gone)
            self._boards &= set(every_board)

    def running_jobs(self, jobs: Iterable[Job]) -> None:
        """Sets the gauges of the running `jobs`, and drops those of jobs that are no longer among them."""
        seen: dict[int, tuple[tuple[str, str, str], str]] = {}
        for job in jobs:
            labels = (str(job.id), job.board, job.kind.value)
            seen[job.id] = (labels, job.step.value)
            self._copied.labels(*labels).set(job.copied)
            self._total.labels(*labels).set(job.total)
            previous = self._jobs.get(job.id)
            if previous is not None and previous[1] != job.step.value:
                self._step.remove(*labels, previous[1])
            self._step.labels(*labels, job.step.value).set(1)
        for job_id, (labels, step) in self._jobs.items():
            if job_id not in seen:
                self._copied.remove(*labels)
                self._total.remove(*labels)
                self._step.remove(*labels, step)
        self._jobs = seen


async def poll_jobs(control_plane: ControlPlane, metrics: RouterMetrics, interval: float) -> None:
    """Runs until cancelled: every `interval` seconds, the running rebalancing jobs' step and progress become
    metrics. A control plane that does not answer is logged and asked again next time (the gauges keep their
    last values meanwhile). Anything else it raises is a bug, for its owner (`BackgroundTasks`) to log and
    restart it after."""
    while True:
        try:
            metrics.running_jobs(await control_plane.jobs.list(running=True))
        except RankshardError as exc:
            log.warning("could not read the running jobs for their metrics: %s", exc)
        await asyncio.sleep(interval)


class MetricsListenError(OSError):
    """The metrics endpoint cannot listen on its address."""


@contextlib.asynccontextmanager
async def serving_metrics(host: str, port: int) -> AsyncIterator[RouterMetrics | None]:
    """A new `RouterMetrics`, served at ``http://host:port/metrics`` until exit; None (and nothing served) when
    `port` is 0. Raises `MetricsListenError` when the address cannot be bound."""
    if not port:
        yield None
        return
    metrics = RouterMetrics()
    try:
        server, thread = start_http_server(port, host, registry=metrics.registry)
    except OSError as exc:
        raise MetricsListenError(
            f"cannot serve metrics on {host}:{port}: {(exc.strerror or str(exc)).lower()}"
        ) from None
    log.info("rankshard: metrics on http://%s:%d/metrics", host, port)
    try:
        yield metrics
    finally:
        # shutdown() waits for the server's loop to notice (up to half a second): not on the event loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join()
