"""Prometheus metrics of one node, served at ``/metrics`` on the MCP HTTP port (http and sse).

Why read at scrape time: everything but the batch histograms already exists as cheap state on
the node (the fold's per-workflow counts, the clock's head set and event count, the peer table,
the host's traffic counters, the executor's lane stats). A custom collector reads them when
Prometheus asks, so the hot paths pay nothing for metrics; only a finished model call pays one
listener call (``inference.observe``) to feed the two histograms.

Why a registry per node (not prometheus_client's global one): several nodes run in one test
process, and the global registry refuses a second metric of the same name.

Every value is read, never made up: a part the node does not run (networking off) is left out
of the scrape rather than reported as zero, and a part whose read fails is left out and logged.
Two documented exceptions report what is true of an engine or host without the newer parts:
``inference_workers`` is 1 (inference runs in this process) from an engine without
``workers_info()``, and the direct-push counters are 0 where no direct push adds to
``Traffic.direct_messages_*``.

The batch histograms hear every engine in the process (``inference.observe`` is per process):
``mcp serve`` runs one node per process, so there they are that node's.

Reads run on the trio loop, synchronously and without disk: the tasks count is O(workflows),
the peers O(peers); nothing else is more than O(1) per lane.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from inference import observe

log = structlog.get_logger("mcp_server.metrics")

PREFIX = "ipfs_accelerate_"
METRICS_PATH = "/metrics"
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TASK_STATES = ("queued", "claimed", "running", "done", "failed", "cancelled")
WORKFLOW_STATES = ("pending", "running", "completed", "failed", "cancelled")
PEER_STATES = ("alive", "lapsed", "incompatible")


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


class NodeCollector(Collector):
    """Reads a node's existing state when scraped (see the module doc)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._failed: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        for section in (self._info, self._tasks, self._queue, self._inference, self._clock, self._sync,
                        self._peers, self._traffic):
            try:
                metrics = list(section())
            except Exception as exc:  # noqa: BLE001 - one broken read must not empty the scrape
                name = section.__name__
                if name not in self._failed:  # once per section: a scrape every 15 s must not flood the log
                    self._failed.add(name)
                    log.warning("metrics section left out", section=name, error=f"{type(exc).__name__}: {exc}")
                continue
            yield from metrics

    # ------------------------------------------------------------------ sections

    def _info(self) -> Iterator[Metric]:
        from p2p.node import VERSION

        node = self.node
        info = GaugeMetricFamily(PREFIX + "node_info", "This node (value 1)", labels=["peer_id", "name", "version"])
        info.add_metric([node.peer_id, str(node.config.node_name), VERSION], 1)
        yield info
        yield _gauge("node_start_time_seconds", "When this node started (unix time)", node.started_at)
        yield _gauge("node_capacity", "Concurrent tasks this node advertises", node.capacity)

    def _tasks(self) -> Iterator[Metric]:
        state = self.node.scheduler.state
        tasks = dict.fromkeys(TASK_STATES, 0)
        flows = dict.fromkeys(WORKFLOW_STATES, 0)
        for wf in list(state.workflows.values()):
            for status, n in state.counts(wf).items():
                tasks[status.value] = tasks.get(status.value, 0) + n
            ws = state.workflow_status(wf).value
            flows[ws] = flows.get(ws, 0) + 1
        fam = GaugeMetricFamily(PREFIX + "tasks", "Tasks of every workflow this node holds, by state "
                                "(replicated workflows count each logical task once)", labels=["state"])
        for k, v in tasks.items():
            fam.add_metric([k], v)
        yield fam
        wfam = GaugeMetricFamily(PREFIX + "workflows", "Workflows this node holds, by state", labels=["state"])
        for k, v in flows.items():
            wfam.add_metric([k], v)
        yield wfam

    def _queue(self) -> Iterator[Metric]:
        sched = self.node.scheduler
        yield _gauge("queue_depth", "Tasks this node owns and has not finished (queued here or running)",
                     sched.local_queue())
        yield _gauge("tasks_running_here", "Tasks running on this node now", len(sched.running))

    def _inference(self) -> Iterator[Metric]:
        engine = self.node.engine
        info = _workers_info(engine)
        yield _gauge("inference_workers", "Live inference workers (the engine's own count; 1 when the engine "
                     "runs inference in this process and gives none)", 1 if info is None else info["live"])
        if info is not None:
            yield _gauge("inference_workers_busy", "Inference workers running a batch now", info["busy"])
            yield _gauge("inference_workers_starting", "Inference workers started and not ready yet", info["starting"])
            yield _gauge("inference_workers_target", "Workers the autoscaler wants now", info["target"])
            yield _gauge("inference_queue_items", "Items queued in the executor, waiting for a worker",
                         info["queue_depth"])
            yield _counter("inference_worker_crashes", "Inference workers that died", info.get("crashes", 0))
        lanes = engine.executor.stats().values()
        yield _counter("inference_requests", "Inference requests the batching executor took",
                       sum(s["requests"] for s in lanes))
        yield _counter("inference_items", "Items the batching executor took", sum(s["items"] for s in lanes))
        yield _counter("inference_batches", "Model calls the batching executor made", sum(s["batches"] for s in lanes))
        yield _counter("inference_isolated_reruns", "Batches whose model call raised and were rerun item by item",
                       sum(s["isolated_reruns"] for s in lanes))
        yield _gauge("inference_lanes", "Executor lanes (model, task, backend) in use", len(lanes))

    def _clock(self) -> Iterator[Metric]:
        clock = self.node.clock
        yield _gauge("clock_events", "Events in this node's Merkle clock", len(clock))
        yield _gauge("clock_heads", "Heads of this node's Merkle clock", len(clock.heads()))
        yield _gauge("clock_orphans", "Events held until their parents arrive", clock.orphan_count())
        yield _gauge("clock_pending_writes", "Clock rows queued to the writer and not committed yet",
                     clock.pending_writes)

    def _sync(self) -> Iterator[Metric]:
        rep = self.node.replicator
        if rep is None:  # networking off: there is nothing to sync with
            return
        peers = {rec.heartbeat.peer_id for rec in self.node.peers.records(include_dead=True)}
        if self.node.net is not None:
            peers.update(self.node.net.connected_peers())
        yield _gauge("sync_peers_behind", "Peers that announced heads this node does not hold yet (a sync "
                     "from each is running)", sum(1 for p in peers if rep.lagging(p)))
        yield _gauge("sync_caught_up", "1 when no catch-up holds this node's claims back, else 0",
                     1 if rep.caught_up() else 0)
        yield _gauge("sync_missing_result_blocks", "Result blocks named by folded events and not held yet",
                     rep.missing_results)
        yield _counter("sync_events", "Events applied from peers", rep.synced_events)

    def _peers(self) -> Iterator[Metric]:
        node = self.node
        if node.net is None:
            return
        states = dict.fromkeys(PEER_STATES, 0)
        for rec in node.peers.records(include_dead=True):
            pid = rec.heartbeat.peer_id
            if pid == node.peer_id:
                continue
            if rec.incompatible:
                states["incompatible"] += 1
            elif node.peers.is_alive(pid):
                states["alive"] += 1
            else:
                states["lapsed"] += 1
        fam = GaugeMetricFamily(PREFIX + "peers", "Peers in the peer table, by state: alive (heard within the "
                                "lease, same consensus settings), lapsed (silent past the lease, still "
                                "remembered), incompatible (different consensus settings)", labels=["state"])
        for k, v in states.items():
            fam.add_metric([k], v)
        yield fam
        yield _gauge("peers_connected", "Peers with an open libp2p connection", len(node.net.connected_peers()))

    def _traffic(self) -> Iterator[Metric]:
        net = self.node.net
        if net is None:
            return
        t = net.traffic
        gossip = CounterMetricFamily(PREFIX + "gossip_messages", "Gossipsub messages published by this node (out) "
                                     "and delivered to it from other peers (in)", labels=["direction"])
        gossip.add_metric(["in"], t.gossip_messages_in)
        gossip.add_metric(["out"], t.gossip_messages_out)
        yield gossip
        push = CounterMetricFamily(PREFIX + "direct_push_messages", "Heads announcement frames pushed on direct "
                                   "streams (several announcements fold into one while a stream is busy; 0 until a direct push runs)", labels=["direction"])
        push.add_metric(["in"], t.direct_messages_in)
        push.add_metric(["out"], t.direct_messages_out)
        yield push
        nbytes = CounterMetricFamily(PREFIX + "network_bytes", "Payload bytes: frames on this node's libp2p "
                                     "streams and gossip message data (libp2p's own overhead not counted)",
                                     labels=["direction", "channel"])
        nbytes.add_metric(["in", "stream"], t.stream_bytes_in)
        nbytes.add_metric(["out", "stream"], t.stream_bytes_out)
        nbytes.add_metric(["in", "gossip"], t.gossip_bytes_in)
        nbytes.add_metric(["out", "gossip"], t.gossip_bytes_out)
        yield nbytes


def _workers_info(engine: Any) -> dict[str, Any] | None:
    """The engine's ``workers_info()`` (live, busy, starting, target, queue_depth, crashes), or
    None from an engine without one: there every model call runs in a thread of this process."""
    info = getattr(engine, "workers_info", None)
    return info() if callable(info) else None


class NodeMetrics:
    """A node's metrics registry: the scrape-time collector plus the two batch histograms.
    :meth:`close` stops the histograms listening (the node is going away)."""

    def __init__(self, node: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        self.batch_seconds = Histogram(
            PREFIX + "inference_batch_seconds", "Time of one model call (a batch), from handing it to the worker "
            "until its results came back", ["model", "task"], registry=self.registry, buckets=BATCH_SECONDS_BUCKETS)
        self.batch_size = Histogram(
            PREFIX + "inference_batch_size", "Items in one model call", ["model", "task"],
            registry=self.registry, buckets=BATCH_SIZE_BUCKETS)
        self._stop: Callable[[], None] | None = observe.listen(self._on_batch)

    def _on_batch(self, rec: observe.BatchRecord) -> None:
        self.batch_seconds.labels(rec.model, rec.task).observe(rec.seconds)
        self.batch_size.labels(rec.model, rec.task).observe(rec.size)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when ``accept`` asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


class MetricsRoute:
    """ASGI middleware: ``GET /metrics`` gets the node's metrics, every other request goes to
    ``app``. Put it inside the bearer-token check, so off loopback a scrape needs the token like
    MCP does; ``security`` (the MCP transport's Host/Origin allowlist) guards it against DNS
    rebinding like the MCP endpoints."""

    def __init__(self, app: Any, metrics: NodeMetrics, security: Any = None, path: str = METRICS_PATH) -> None:
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app = app
        self.metrics = metrics
        self.path = path
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import Response

        request = Request(scope, receive)
        if scope.get("method") not in ("GET", "HEAD"):
            response = Response("metrics are read with GET\n", status_code=405, headers={"Allow": "GET, HEAD"})
        else:
            refused = await self._security.validate_request(request, is_post=False)
            if refused is not None:
                response = refused
            else:
                body, content_type = self.metrics.render(request.headers.get("accept"))
                response = Response(body if scope["method"] == "GET" else b"", media_type=content_type)
        await response(scope, receive, send)
