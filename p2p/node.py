"""One process, one peer: identity, Merkle clock, scheduler, peer table, inference engine and,
when enabled, the libp2p network that replicates the clock.

``Node`` is the Python API under the MCP tools: every tool is one method here. Methods that
change state validate first and write nothing when the input is bad (``NodeError``).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import structlog
import trio
from multiformats import CID

from p2p.clock import MerkleClock, codec
from p2p.clock.cids import cid_raw
from p2p.compaction import pages as snapshot_pages
from p2p.compaction.compactor import Compactor
from p2p.compaction.joining import DroppedAdopter
from p2p.compaction.expiry import ResultExpiry
from p2p.compaction.pruner import Pruner
from p2p.compaction.pages import SnapshotPages
from p2p.compaction.snapshot import SnapshotError
from p2p.config import NodeConfig
from p2p.content import CidCache, ContentError, dir_cid
from p2p.content.inputs import InputChunks, chunk_block, pack_inputs
from p2p.cache.cache import cache_offers, open_node_cache
from p2p.control import serve_control
from p2p.dht import Dht
from p2p.discovery import Discovery
from p2p.errors import NodeError
from p2p.identity import Identity
from p2p.liveness import Liveness
from p2p.net import load_swarm_key, open_host
from p2p.peers import Heartbeat, PauseDetector, PeerCaps, PeerTable
from p2p.protocols.heartbeat import WorkersSummary
from p2p.protocols.wire import blocks_protocol, topic
from p2p.replication import BlockServer, GossipBroadcaster, PushBroadcaster, Replicator, StreamDAGService
from p2p.scheduler.ops import MAX_PRIORITY, MAX_REPLICAS, MAX_TASKS, MIN_PRIORITY, TaskSpec, WorkflowTag
from p2p.scheduler.scheduler import Scheduler
from p2p.scheduler.state import TaskStatus, WorkflowStatus
from p2p.scheduler.views import workflow_summary

log = structlog.get_logger("p2p.node")

# A replicated workflow may keep this many times scheduler.max_tasks_per_workflow task slots (each
# slot is a task to the fold: 10,000 tasks x 7 slots took 3 s to fold and 78 MiB on every peer).
SLOTS_PER_WORKFLOW_FACTOR = 4

VERSION = "0.1.0"
DIAL_WAIT_S = 10.0  # pull_model: how long DHT providers we dialled get to connect, on top of 3 heartbeats
ProgressFn = Callable[[int, int, str], Awaitable[None]]


def derive_capacity(hardware: dict[str, Any]) -> float:
    """A peer's assignment weight from what it really has: the cores it may run on (taskset and
    cgroups count), plus each GPU counted as 8 cores."""
    cores = hardware.get("cpu_usable") or hardware.get("cpu_logical") or os.cpu_count() or 1
    return float(cores + 8 * len(hardware.get("cuda_devices") or ()))


class Node:
    """One peer: the clock, the scheduler, the peer table and, with networking on, the libp2p
    host with replication, liveness and discovery — all started in one nursery by :meth:`open`.

    Why one object: the MCP tools, the control socket and the seed's Python API all need the
    same few verbs (submit, status, wait, cancel, list peers) over the same state, and every
    part the node starts must stop with it (trio's structured concurrency). The node wires the
    components together; none of them knows the node."""

    def __init__(self, config: NodeConfig, identity: Identity, clock: MerkleClock, engine: Any) -> None:
        self.config = config
        self.identity = identity
        self.clock = clock
        self.engine = engine
        self.peer_id = identity.peer_id_str
        self._beat_seq = time.time_ns()  # Heartbeat.seq: rises per heartbeat and across restarts
        self.started_at = time.time()
        self._hardware: dict[str, Any] | None = None
        self._models: list[str] | None = None
        self.model_cids: dict[str, str] = {}  # model name -> UnixFS CID of its files (hash_models)
        self.model_files: dict[str, list[dict[str, Any]]] = {}  # model name -> [{path, size, cid}]
        self.model_paths: dict[str, Path] = {}  # model name -> its folder (what the content server reads)
        self.content_server: Any = None  # p2p.content.exchange.ContentServer, with networking on
        self.infer_server: Any = None  # p2p.remote_infer.InferServer: runs peers' inference, with networking on
        self.members_only = False  # networking on with a network key or allow_peers: only members connect
        self._pulling: set[str] = set()  # root CIDs being pulled now
        self._files_by_cid: dict[str, list[dict[str, Any]]] = {}  # remote models' files (content never changes)
        self.net: Any = None  # p2p.net.NetHost when networking is on
        self.network: Discovery | None = None  # connect/listen_addrs; None without networking
        self.dht: Dht | None = None  # the Kademlia DHT; None without networking or with network.dht = "off"
        self.replicator: Replicator | None = None
        self.liveness: Liveness | None = None
        self._caps: PeerCaps | None = None
        sched = config.scheduler
        self.capacity = sched.capacity or derive_capacity(self.hardware())
        self.pause = PauseDetector(sched.pause_threshold_s)
        self.consensus = config.consensus_settings()
        self.settings_digest = config.settings_digest()
        self.peers = PeerTable(
            # without networking there are no peers to misjudge, and no ticker observes the
            # clock: reads far apart would be logged as pauses of ours
            self.caps, lease_s=sched.lease_s, pause=self.pause if config.network.enabled else None, settings=self.consensus,
            settings_digest=self.settings_digest, forget_s=config.network.peer_forget_s,
            max_peers=config.network.max_peers,
        )
        self.cache = open_node_cache(config)  # p2p.cache.ResultCache; None with cache.enabled off
        # chunked submits' inputs: local blocks, or fetched from peers once networking is up
        self.inputs = InputChunks(clock)
        self.scheduler = Scheduler(
            clock, engine, self.peers, sched,
            max_inflight=sched.max_inflight, max_ops_per_event=config.clock.max_ops_per_event,
            ready=self.caught_up, lagging=self._lagging, cache=self.cache, inputs=self.inputs,
        )
        self.expiry = ResultExpiry(self.scheduler, clock, retention_s=config.results.retention_s)
        self.pruner = Pruner(self.scheduler, clock, self.peer_id,
                             live_peers=lambda: [p.peer_id for p in self.peers.live_peers()])
        self.compactor = Compactor(self.scheduler, clock, self.peer_id, retention_s=config.clock.retention_s,
                                   max_chunk_bytes=config.clock.max_block_bytes, drop=config.clock.drop_compacted,
                                   pruner=self.pruner if config.clock.prune_events else None, expiry=self.expiry)
        self.adopter: DroppedAdopter | None = None  # with networking: adopts compacted workflows from peers
        # read from any thread (a worker thread warms it: ``warm_status``), so through a reader connection
        self.snapshot_pages = SnapshotPages(lambda raw: dict(clock.collect_blocks_sync([raw], 0, 1, 1 << 62)).get(raw))

    def _dropped_records(self, workflow_ids: list[str]) -> list[bytes]:
        """The records of those compacted workflows whose records this node dropped (a joiner
        adopts them before the stubs of their pruned events: p2p.compaction.joining)."""
        dropped = self.scheduler.state.dropped
        return [dropped[w].encode() for w in workflow_ids if w in dropped]

    def _lagging(self, peer: str) -> bool:
        return self.replicator is not None and self.replicator.lagging(peer)

    def caught_up(self) -> bool:
        """Whether this peer may claim: not while catching up with its peers' history."""
        if self.liveness is not None:
            self.liveness.check_pause()  # a decision right after a pause must already see it
        return self.replicator is None or self.replicator.caught_up()

    # ------------------------------------------------------------------ life

    @classmethod
    @asynccontextmanager
    async def open(cls, config: NodeConfig) -> AsyncIterator["Node"]:
        """Start every part of the node in one nursery; leaving the block stops them all."""
        from inference.engine import InferenceEngine

        data_dir = Path(config.data_dir).expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        identity = Identity.load_or_create(data_dir)
        clock = MerkleClock.open(data_dir / "clock.sqlite", identity, config.clock)
        try:
            async with InferenceEngine.open(config.inference, data_dir) as engine:
                node = cls(config, identity, clock, engine)
                await node.hash_models()
                t0 = time.perf_counter()
                node.scheduler.load()
                node.expiry.load()  # workflows whose result blocks expired before the restart
                gc.freeze()  # the loaded history is long-lived: keep full collections from walking it
                log.info("clock loaded", events=len(clock), workflows=len(node.scheduler.state.workflows),
                         seconds=round(time.perf_counter() - t0, 3), peer_id=node.peer_id)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(clock.watch_writer)  # a failed disk write stops the node, loudly
                    # load the default model now, in the background: a long-running node pays its
                    # warm-up at start (not by growing on its first task), and nothing waits for it
                    nursery.start_soon(engine.warm)
                    await nursery.start(serve_control, node)
                    await nursery.start(node.scheduler.run)
                    if config.clock.compact:  # this node's finished workflows, and peers' compactions
                        await nursery.start(node.compactor.run)
                    if node.cache is not None:  # staged writes, peers' key indexes
                        await nursery.start(node.cache.run)
                    if config.network.enabled:
                        await nursery.start(node._run_network)
                    try:
                        yield node
                    finally:
                        node.scheduler.flush()
                        nursery.cancel_scope.cancel()
                if node.cache is not None:
                    node.cache.close()
        finally:
            clock.close()

    async def _run_network(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The libp2p host and the three components on it: replication, liveness, discovery."""
        cfg = self.config.network
        psk = load_swarm_key(Path(cfg.psk_file).expanduser()) if cfg.psk_file else None
        async with AsyncExitStack() as stack:
            net = self.net = await stack.enter_async_context(open_host(
                self.identity.key_pair, cfg, psk, max_kept_peers=cfg.max_kept_peers, kept_give_up_s=cfg.kept_give_up_s))
            heads = await stack.enter_async_context(GossipBroadcaster.open(net, topic(cfg.network, "heads")))
            beats = await stack.enter_async_context(GossipBroadcaster.open(net, topic(cfg.network, "peers")))
            peer_events = await stack.enter_async_context(net.peer_events())
            push = await stack.enter_async_context(PushBroadcaster.open(net, queue=cfg.push_queue, network=cfg.network)) if cfg.direct_push else None
            sched = self.scheduler
            dag = StreamDAGService(net, cfg.network)
            self.adopter = DroppedAdopter(self.scheduler, self.clock, dag)
            replicator = Replicator(
                self.clock, heads, dag, peer_id=self.peer_id, config=cfg,
                ingest=sched.ingest, local_event=sched.local_event, take_unannounced=sched.take_unannounced,
                on_results=sched.changed.fire, on_ready=sched.peers_changed, on_heard=self.peers.touch,
                connected_peers=net.connected_peers, known_peer=lambda peer: self.peers.get(peer) is not None,
                live_peers=lambda: [p.peer_id for p in self.peers.live_peers()],
                startup_wait_s=2 * cfg.heartbeat_s, direct=push, gossip=cfg.gossip_heads,
                adopter=self.adopter, checkpoint_quorum=self.config.clock.checkpoint_quorum,
            )
            self.inputs.dag, self.inputs.peers = replicator.dag, net.connected_peers
            server = BlockServer(self.clock, replicator.heads_raw, max_blocks_per_request=cfg.max_blocks_per_request,
                                 max_frame_bytes=cfg.max_frame_bytes, dropped=self._dropped_records)
            net.set_request_handler(blocks_protocol(cfg.network), server.handle)
            # members only (a network key or allow_peers): services that spend this node's compute
            # or expose its tools are not offered to whoever can reach an open network's port
            self.members_only = psk is not None or bool(cfg.allow_peers)
            if self.members_only:
                from p2p.protocols.infer import INFER_PROTOCOL
                from p2p.remote_infer import InferServer

                self.infer_server = InferServer(self)  # peers that lack a model run inference here
                net.set_request_handler(INFER_PROTOCOL, self.infer_server.handle)
            else:
                log.info("inference for peers not offered: an open network (no key, no allow_peers)")
            if self.config.inference.share_models:
                from p2p.content.exchange import ContentServer
                from p2p.protocols.content import CONTENT_PROTOCOL

                self.content_server = ContentServer(
                    lambda: {self.model_cids[m]: self.model_paths[m] for m in self.local_models()
                             if m in self.model_cids and m in self.model_paths})
                net.set_stream_handler(CONTENT_PROTOCOL, self.content_server.handle)
            heartbeat = self.heartbeat
            cache_server = self.cache.attach(
                net, lambda: cache_offers(self.peers, net, self.peer_id), max_frame_bytes=cfg.max_frame_bytes) if self.cache else None
            if cache_server is not None:  # a shared cache (network key): answer peers, advertise its size
                from p2p.protocols.cache import CACHE_PROTOCOL

                net.set_request_handler(CACHE_PROTOCOL, cache_server.handle)
                heartbeat = lambda: self.heartbeat().model_copy(update={"cache_entries": self.cache.advertised_entries()})  # noqa: E731
            dht = self.dht = Dht(
                net, network=cfg.network, mode=cfg.dht, interval_s=cfg.dht_interval_s, dial=lambda p, a: discovery.learned(p, a),
                psk=psk,
                provides=lambda: [self.model_cids[m] for m in self.local_models() if m in self.model_cids]
                if self.config.inference.share_models else [],
            ) if cfg.dht != "off" and not cfg.allow_peers else None

            def connected(peer: str) -> None:
                replicator.peer_connected(peer)
                if dht is not None:
                    dht.poke()

            from p2p.dht import is_public

            reserve = cfg.relay_reserve == "always" or (
                cfg.relay_reserve == "auto" and not cfg.relay_service and not any(is_public(a) for a in net.listen_addrs()))
            discovery = Discovery(net, on_connected=connected, max_relays=cfg.max_relays if reserve else 0)
            liveness = Liveness(
                self.peers, self.pause, beats, peer_id=self.peer_id, heartbeat=heartbeat,
                heartbeat_s=cfg.heartbeat_s, on_peers_changed=sched.peers_changed,
                on_heads=replicator.want if cfg.gossip_heads else lambda peer, heads: None,
                on_learned=discovery.learned, on_resumed=replicator.resumed, ping=net.ping,
                on_silent=self._drop_connections,
                connected_peers=net.connected_peers, diagnose=net.diagnose,
            )
            for raw in self._missing_result_blocks():
                replicator.expect_result(raw, None)
            stack.callback(lambda: log.info("replication stats", **replicator.stats()))  # on the way out
            async with trio.open_nursery() as nursery:
                await nursery.start(replicator.run)
                await nursery.start(discovery.run, peer_events)
                if dht is not None:
                    await nursery.start(dht.run)
                self.replicator, self.liveness, self.network = replicator, liveness, discovery
                await nursery.start(liveness.run)
                if self.config.inference.auto_pull:
                    nursery.start_soon(self._auto_puller().run)
                log.info("p2p node up", peer_id=self.peer_id, addrs=net.listen_addrs())
                task_status.started()

    def _auto_puller(self) -> Any:
        """``inference.auto_pull``: when idle, pull the model most open tasks we may run need."""
        from p2p.content.autopull import AutoPuller, wanted

        def offered(model: str, cid: str) -> bool:
            return any(p != self.peer_id for p in self.model_cids_known(model).get(cid, []))

        def wants() -> list[Any]:
            sched = self.scheduler
            return wanted(sched.state, sched.open_task_ids(), self.peer_id, set(self.local_models()), offered)

        return AutoPuller(wants=wants, idle=lambda: self.scheduler.local_queue() == 0, pull=self.pull_model)

    async def _drop_connections(self, peers: set[str]) -> None:
        """Close connections to peers that went silent; kept peers are redialled with backoff,
        so a healed partition reconnects within ``reconnect_max_backoff_s``. All at once: each
        close is bounded (``NetHost.disconnect`` aborts one stuck on a dead link), but one
        after another they would add up, and a dead connection still counts as connected."""
        net = self.net
        if net is None:
            return
        async with trio.open_nursery() as nursery:
            for peer in sorted(peers):
                if net.is_connected(peer):
                    log.info("closing the connection of a silent peer", peer=peer)
                    nursery.start_soon(net.disconnect, peer)

    def _missing_result_blocks(self) -> list[bytes]:
        """Result blocks of results this peer knows of but does not hold (e.g. after a restart)."""
        out = []
        for task in self.scheduler.state.tasks.values():
            res = task.result
            if res is not None and res.result is None and res.result_cid is not None and not self.clock.has(res.result_cid):
                out.append(cid_raw(res.result_cid))
        return out

    async def connect(self, multiaddr: str) -> str:
        """Dial a peer and keep the connection (the connect_peer tool, `p2p join`)."""
        if self.network is None:
            raise NodeError("the node runs without networking; start it with networking on to connect to peers")
        return await self.network.connect(multiaddr)

    # ------------------------------------------------------------ about me

    def hardware(self) -> dict[str, Any]:
        if self._hardware is None:
            hw = self.engine.hardware()
            self._hardware = hw.to_dict() if hasattr(hw, "to_dict") else dict(hw)
        return self._hardware

    def local_models(self) -> list[str]:
        if self._models is None:
            self._models = sorted({m.name if hasattr(m, "name") else str(m) for m in self.engine.available_models()})
        return self._models

    def listen_addrs(self) -> list[str]:
        """Where peers can reach us: our listen addresses, then our addresses through the relays
        that hold a reservation for us (a node behind NAT is reached only by those)."""
        if self.net is None:
            return []
        relays = getattr(self.net, "relays", None)
        return self.net.listen_addrs() + (relays.circuit_addrs() if relays is not None else [])

    async def hash_models(self) -> None:
        """The content id of every served model's files (the CID ``ipfs add -r`` gives), in a
        worker thread: tasks pin it, and only peers that advertise the same may claim them.
        Cached across starts by (path, size, mtime, inode), so only a changed model is hashed
        again. A model that cannot be hashed is served without one (it takes only unpinned tasks)."""
        cache_dir = Path(os.environ.get("IPFS_ACCELERATE_CONTENT_CACHE") or Path.home() / ".cache" / "ipfs-accelerate")
        infos = [m for m in self.engine.available_models() if getattr(m, "path", None) is not None]

        def hash_all() -> dict[str, str]:
            cache = CidCache(cache_dir)
            out = {}
            for m in infos:
                try:
                    cid, files = dir_cid(Path(m.path), cache)
                    out[m.name] = str(cid)
                    self.model_files[m.name] = files
                    self.model_paths[m.name] = Path(m.path)
                except (ContentError, OSError) as exc:
                    log.warning("model not content-addressed; it takes only unpinned tasks", model=m.name, error=str(exc))
            return out

        t0 = time.perf_counter()
        self.model_cids = await trio.to_thread.run_sync(hash_all)
        self._caps = None
        log.info("models content-addressed", models=self.model_cids, seconds=round(time.perf_counter() - t0, 3))

    def caps(self) -> PeerCaps:
        """What the scheduler needs of this peer; built once (models and capacity are fixed)."""
        if self._caps is None:
            self._caps = PeerCaps(self.peer_id, self.capacity, frozenset(self.local_models()),
                                  tuple(sorted((m, c) for m, c in self.model_cids.items() if m in self.local_models())))
        return self._caps

    def heartbeat(self) -> Heartbeat:
        self._beat_seq += 1
        return Heartbeat(
            seq=self._beat_seq,
            peer_id=self.peer_id,
            name=self.config.node_name,
            addrs=self.listen_addrs(),
            hardware=self.hardware(),
            models=self.local_models(),
            model_cids=self.model_cids,
            queue=self.scheduler.local_queue(),
            capacity=self.capacity,
            version=VERSION,
            heads=[str(c) for c in self.clock.heads()[:1024]],
            settings=self.consensus,
            settings_digest=self.settings_digest,
            cache_entries=self.cache.advertised_entries() if self.cache is not None else 0,
            cache_seq=self.cache.advertised_seq() if self.cache is not None else 0,
            workers=self.workers_summary(),
        )

    def workers_summary(self) -> WorkersSummary | None:
        """This node's workers in a few numbers, for heartbeats and ``list_peers``."""
        info = getattr(self.engine, "workers_info", None)
        return WorkersSummary.of(info()) if info is not None else None

    # --------------------------------------------------------------- tools

    def all_models(self) -> dict[str, list[str]]:
        """Model id -> peers serving it (this peer first)."""
        out: dict[str, list[str]] = {m: [self.peer_id] for m in self.local_models()}
        for rec in self.peers.records():
            if rec.heartbeat.peer_id == self.peer_id:
                continue
            for m in rec.heartbeat.models:
                out.setdefault(m, []).append(rec.heartbeat.peer_id)
        return out

    async def submit_workflow(
        self, name: str, tasks: list[dict[str, Any]], priority: int = 5, tag: str = WorkflowTag.P2P_ELIGIBLE.value,
        replicas: int = 1, cache: bool = True,
    ) -> dict[str, Any]:
        """Validate everything, then write the workflow to the clock (fsynced before it returns)."""
        wtag = self._check_submit(len(tasks), priority, tag, replicas, cache)
        specs: list[TaskSpec] = []
        served = self.all_models()
        local = set(self.local_models())
        for i, raw in enumerate(tasks):
            try:
                spec = raw if isinstance(raw, TaskSpec) else TaskSpec.model_validate(raw)
            except Exception as exc:
                raise NodeError(f"task {i} is malformed: {exc}") from None
            self._check_input(spec.input, f"task {i}")
            specs.append(self._check_task(spec, i, served, local, wtag))
        self._check_slots(len(specs), replicas)
        if replicas > 1:
            self._check_replicas(specs, replicas, wtag)
        shared = {(s.model, s.model_cid, s.task, repr(sorted(s.params.items()))) for s in specs}
        if len(shared) == 1 and len(specs) > 1 and self._chunked(s.input for s in specs):
            return await self._submit_chunked(name, specs[0], [s.input for s in specs], priority, wtag, replicas, cache)
        return await self._submit_inline(
            name, specs, priority, wtag, replicas, cache,
            too_many=f"{len(specs)} tasks that differ in model, task or params are over the {MAX_TASKS} one inline "
                     f"submit may hold; give tasks that share one model, task and params, or split the workflow")

    async def submit_inputs(
        self, name: str, template: dict[str, Any], inputs: list[str], priority: int = 5,
        tag: str = WorkflowTag.P2P_ELIGIBLE.value, replicas: int = 1, cache: bool = True, *, what: str = "input",
    ) -> dict[str, Any]:
        """``submit_workflow`` for tasks that share one ``template`` ({model, task?, params?,
        model_cid?}) and differ only in their input: what a file gives. The template is checked
        once and each input on its own (``what`` names it in errors), so a million inputs cost
        a loop, not a million validated task objects."""
        wtag = self._check_submit(len(inputs), priority, tag, replicas, cache)
        if not isinstance(template, dict) or "input" in template:
            raise NodeError("the template is a {model, task?, params?, model_cid?} object without an input")
        try:
            spec = TaskSpec.model_validate({**template, "input": inputs[0]})
        except Exception as exc:
            raise NodeError(f"the task template is malformed: {exc}") from None
        spec = self._check_task(spec, 0, self.all_models(), set(self.local_models()), wtag)
        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise NodeError(f"{what} {i} is not a string")
            self._check_input(text, f"{what} {i}")
        self._check_slots(len(inputs), replicas)
        if replicas > 1:
            self._check_replicas([spec], replicas, wtag)
        if len(inputs) > 1 and self._chunked(inputs):
            return await self._submit_chunked(name, spec, inputs, priority, wtag, replicas, cache)
        return await self._submit_inline(
            name, [spec.model_copy(update={"input": text}) for text in inputs], priority, wtag, replicas, cache,
            too_many=f"{len(inputs)} inputs inline are over the {MAX_TASKS} one submit may hold; lower "
                     f"scheduler.inline_inputs_bytes so that they go into chunks")

    async def _submit_inline(self, name: str, specs: list[TaskSpec], priority: int, wtag: WorkflowTag, replicas: int,
                             cache: bool, *, too_many: str) -> dict[str, Any]:
        """Write a submit that carries its inputs (``too_many``: the error over ``MAX_TASKS``)."""
        if len(specs) > MAX_TASKS:
            raise NodeError(too_many)
        wid = self.scheduler.submit(name, specs, priority, wtag, replicas=replicas, cache=cache)
        await self.scheduler.durable()
        log.info("workflow submitted", workflow_id=wid, tasks=len(specs), priority=priority, tag=wtag.value)
        return self.workflow_summary(wid)

    def _check_submit(self, n: int, priority: Any, tag: Any, replicas: Any, cache: Any) -> WorkflowTag:
        """The checks of a submit's own fields and its size; returns the tag."""
        cfg = self.config.scheduler
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= MAX_REPLICAS:
            raise NodeError(f"replicas must be an integer from 1 to {MAX_REPLICAS}, got {replicas!r}")
        if not isinstance(cache, bool):
            raise NodeError(f"cache must be true or false, got {cache!r}")
        if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise NodeError(f"priority must be an integer from {MIN_PRIORITY} (highest) to {MAX_PRIORITY} (lowest), got {priority!r}")
        try:
            wtag = WorkflowTag(tag)
        except ValueError:
            raise NodeError(f"unknown tag {tag!r}; use one of: {', '.join(t.value for t in WorkflowTag)}") from None
        if not n:
            raise NodeError("the workflow has no tasks; give at least one {model, input}")
        if n > cfg.max_tasks_per_workflow:
            raise NodeError(f"too many tasks: {n} > the maximum of {cfg.max_tasks_per_workflow} per workflow; split the work")
        return wtag

    def _check_input(self, text: str, what: str) -> None:
        if not text.strip():
            raise NodeError(f"{what} has an empty input")
        if len(text) > self.config.scheduler.max_input_chars:
            raise NodeError(f"{what} input is {len(text)} characters; the maximum is {self.config.scheduler.max_input_chars}")

    def _check_task(self, spec: TaskSpec, i: int, served: dict[str, list[str]], local: set[str], wtag: WorkflowTag) -> TaskSpec:
        """A task's model and params (not its input), then its model pinned by content id."""
        unknown = set(spec.params) - {"top_k"}
        if unknown:
            raise NodeError(f"task {i}: unknown params {sorted(unknown)}; supported: top_k (fill-mask)")
        top_k = spec.params.get("top_k", 5)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100:
            raise NodeError(f"task {i}: top_k must be an integer from 1 to 100, got {top_k!r}")
        if spec.model not in served:
            raise NodeError(f"unknown model {spec.model!r} in task {i}; available: {', '.join(sorted(served)) or 'none'}")
        if wtag is WorkflowTag.LOCAL_ONLY and spec.model not in local:
            raise NodeError(f"task {i}: model {spec.model!r} is not served by this peer, so a local-only workflow can't run it")
        return self._pin_model(spec, i, local)

    def _check_slots(self, n: int, replicas: int) -> None:
        if replicas <= 1:
            return
        from p2p.scheduler.replicas import slots_for

        slots = slots_for(replicas)  # the fold keeps N + 2 slots per task, each with its record
        cap = min(self.config.scheduler.max_tasks_per_workflow * SLOTS_PER_WORKFLOW_FACTOR, MAX_TASKS)
        if n * slots > cap:
            raise NodeError(f"replicas={replicas} keeps {slots} slots per task: {n} tasks need {n * slots} slots, over the "
                            f"{cap} a workflow may hold; split the workflow or use fewer replicas")

    def _chunked(self, inputs: Iterable[str]) -> bool:
        """Whether inputs that share one template go into content-addressed chunks (issue 12
        item 1): when they are larger than ``scheduler.inline_inputs_bytes``. The submit event
        then names the chunks, and only peers that run a task fetch its chunk."""
        size, limit = 0, self.config.scheduler.inline_inputs_bytes
        for text in inputs:
            size += len(text) + 5  # characters: a cheap lower bound of the encoded bytes
            if size > limit:
                return True
        return False

    async def _submit_chunked(self, name: str, spec: TaskSpec, inputs: list[str], priority: int, wtag: WorkflowTag,
                              replicas: int, cache: bool) -> dict[str, Any]:
        chunks = []
        for group in pack_inputs(inputs):
            cid = await self.clock.put_block_async(chunk_block(group), durable=False)  # durable with the submit
            chunks.append((cid, len(group)))
            await trio.sleep(0)  # a million inputs encode in a few hundred steps, none holding the loop long
        wid = self.scheduler.submit_chunks(name, spec, chunks, priority, wtag, replicas=replicas, cache=cache)
        await self.scheduler.durable()
        log.info("workflow submitted", workflow_id=wid, tasks=len(inputs), chunks=len(chunks), priority=priority, tag=wtag.value)
        return self.workflow_summary(wid)

    def _check_replicas(self, specs: list[TaskSpec], replicas: int, tag: WorkflowTag) -> None:
        """Refuse ``replicas`` the network could never satisfy: each task needs that many
        distinct peers serving its model (with the pinned content id), the submitter excluded
        from p2p-only workflows. Peers known now, live or recently heard, count."""
        if tag is WorkflowTag.LOCAL_ONLY:
            raise NodeError(f"replicas={replicas} needs {replicas} distinct peers, but a local-only workflow runs on this peer alone")
        for model, cid in sorted({(s.model, s.model_cid) for s in specs}, key=lambda mc: (mc[0], mc[1] or "")):
            peers = self.model_cids_known(model).get(cid, []) if cid is not None else self.all_models().get(model, [])
            eligible = [p for p in dict.fromkeys(peers) if not (tag is WorkflowTag.P2P_ONLY and p == self.peer_id)]
            if len(eligible) < replicas:
                what = f"model {model!r}" + (f" ({cid})" if cid else "")
                raise NodeError(f"replicas={replicas} needs {replicas} distinct peers serving {what}, but the network has "
                                f"{len(eligible)} eligible peer(s){': ' + ', '.join(eligible) if eligible else ''}; "
                                f"use replicas <= {max(1, len(eligible))} or wait for more peers")

    def model_cids_known(self, model: str) -> dict[str, list[str]]:
        """Content id -> peers that advertise ``model`` with it (this peer first)."""
        out: dict[str, list[str]] = {}
        if model in self.model_cids and model in self.local_models():
            out[self.model_cids[model]] = [self.peer_id]
        for rec in self.peers.records():
            hb = rec.heartbeat
            cid = hb.model_cids.get(model)
            if hb.peer_id != self.peer_id and cid is not None and model in hb.models:
                out.setdefault(cid, []).append(hb.peer_id)
        return out

    async def list_models(self) -> list[dict[str, Any]]:
        """Every model this node or a live peer serves, one row per (name, content id): the files,
        whether this node serves it, and the peers that advertise exactly that content. A remote
        model's files are read from one of its peers (directory and file root nodes, verified;
        cached by CID, as content never changes); empty when no peer can answer now."""
        rows: dict[tuple[str, str | None], dict[str, Any]] = {}
        local = set(self.local_models())
        for m in sorted(self.all_models()):
            known = self.model_cids_known(m)
            if not known:  # nobody content-addressed it: one row by name
                rows[(m, None)] = {"model": m, "cid": None, "files": [], "local": m in local,
                                   "peers": self.all_models()[m]}
            for cid, peers in sorted(known.items()):
                mine = m in local and self.model_cids.get(m) == cid
                files = self.model_files.get(m, []) if mine else await self._remote_files(cid, peers)
                rows[(m, cid)] = {"model": m, "cid": cid, "files": files, "local": mine, "peers": list(peers)}
        return list(rows.values())

    async def _remote_files(self, cid: str, peers: list[str]) -> list[dict[str, Any]]:
        from p2p.content.exchange import PullError, cid_from_str, describe_remote

        cache = self._files_by_cid
        if cid in cache:
            return cache[cid]
        net = self.net
        for peer in peers:
            if net is None or peer == self.peer_id or not net.is_connected(peer):
                continue
            try:
                cache[cid] = await describe_remote(net, cid_from_str(cid), peer)
                return cache[cid]
            except (PullError, ContentError) as exc:
                log.info("could not list a remote model's files", cid=cid, peer=peer, error=str(exc))
        return []

    async def _reach_providers(self, ref: str) -> None:
        """No connected peer offers ``ref`` (a CID, or a name whose CIDs heartbeats told us):
        dial its providers from the DHT, and wait a few heartbeats for one to offer it. A
        provider is used only once its own heartbeat offers the model (records are a peer's
        word; heartbeats come only from members)."""
        if self.dht is None or self.network is None or self.net is None:
            return
        cids = {c for c in [_canonical_cid(ref)] if c} | {
            c for raw in self.model_cids_known(ref) if (c := _canonical_cid(raw)) is not None}

        def offered_by_a_connected_peer() -> bool:
            return any(p != self.peer_id and self.net.is_connected(p)
                       for m in self.all_models() for raw, peers in self.model_cids_known(m).items()
                       if _canonical_cid(raw) in cids for p in peers)

        local = set(self.local_models())
        if not cids or ref in local or any(self.model_cids.get(m) in cids for m in local) or offered_by_a_connected_peer():
            return
        dialled = 0
        for cid in sorted(cids):
            for peer, addrs in await self.dht.providers(cid):
                if not self.net.is_connected(peer):
                    self.network.learned(peer, addrs)
                    dialled += 1
        log.info("pull: providers from the DHT", ref=ref, dialled=dialled)
        if dialled:
            with trio.move_on_after(3 * self.config.network.heartbeat_s + DIAL_WAIT_S):
                while not offered_by_a_connected_peer():
                    await trio.sleep(0.1)

    async def pull_model(self, ref: str, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Fetch a model (a name or a content id) from the peers that advertise it, verify every
        block, install it under the engine's pulled-models folder and serve and advertise it at
        once. After a crash it resumes from what it staged (the files in ``pull-staging/<cid>``, the
        inner blocks in the block store); see p2p.content.exchange."""
        from p2p.content.exchange import BlockStore, PullError, cid_from_str, fetch_dag, install_staged

        ref = (ref or "").strip()
        if not ref:
            raise NodeError("give a model name or a content id to pull")
        if self.net is None:
            raise NodeError("the node runs without networking; start it with networking on to pull models")
        await self._reach_providers(ref)
        offers: dict[str, tuple[set[str], set[str]]] = {}  # cid -> (names, peers other than us)
        for m in self.all_models():
            for raw, peers in self.model_cids_known(m).items():
                cid = _canonical_cid(raw)
                if cid is None:  # an advert that is not a CID (a hostile or broken peer): skipped
                    continue
                names, others = offers.setdefault(cid, (set(), set()))
                names.add(m)
                others.update(p for p in peers if p != self.peer_id)
        served = ", ".join(f"{m} ({c})" for c, (ns, _) in sorted(offers.items()) for m in sorted(ns)) or "none"
        if (_canonical_cid(ref) or ref) in offers:
            cid = _canonical_cid(ref) or ref
            name = min(offers[cid][0])
        else:
            by_name: dict[str, set[str]] = {}
            for raw, peers in self.model_cids_known(ref).items():
                c = _canonical_cid(raw)
                if c is not None and c in offers:
                    by_name.setdefault(c, set()).update(peers)
            if not by_name:
                raise NodeError(f"no peer serves a model named or with content id {ref!r}; the network serves: {served}")
            cid = min(by_name, key=lambda c: (-len(by_name[c]), c))
            name = ref
        if name in self.local_models() and self.model_cids.get(name) == cid:
            return {"model": name, "cid": cid, "path": str(self.model_paths.get(name, "")), "already_local": True,
                    "files": self.model_files.get(name, []), "stats": None}
        parts = name.split("/")
        if len(parts) > 2 or any(not p or p in (".", "..") or not all(ch.isalnum() or ch in "._-" for ch in p) for p in parts):
            raise NodeError(f"model name {name!r} cannot be a folder name here (1 or 2 segments of letters, digits, . _ -)")
        peers = sorted(p for p in offers[cid][1] if self.net.is_connected(p))
        direct = [p for p in peers if self.net.connection_kind(p) != "relayed"]
        peers = direct or peers  # a model pull prefers direct connections (a relay's data limit is for control traffic)
        if not peers:
            raise NodeError(f"no connected peer serves {name} ({cid}) now; the network serves: {served}")
        if cid in self._pulling:
            raise NodeError(f"a pull of {name} ({cid}) is already running on this node")
        data_dir = Path(self.config.data_dir).expanduser()
        store = BlockStore(data_dir / "blocks")
        root = cid_from_str(cid)
        final = Path(self.engine.pulled_dir) / name
        self._pulling.add(cid)
        cids: set[bytes] = set()
        staging = data_dir / "pull-staging" / cid  # the files land here as they are fetched; kept to resume
        try:
            # one interrupted pull is kept to resume at most: a model's worth of disk, not one per CID tried
            await trio.to_thread.run_sync(_remove_other_staging, staging.parent, {cid, *self._pulling})
            try:
                stats, cids = await fetch_dag(self.net, root, peers, store, max_bytes=self.config.inference.max_model_bytes,
                                              free_dir=data_dir, progress=progress, staging=staging)
                await trio.to_thread.run_sync(install_staged, staging, root, final)
            except PullError as exc:
                if not exc.resumable:  # the model, the disk or this node failed, not the peers: nothing to resume
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(shutil.rmtree, staging, True)
                        await trio.to_thread.run_sync(store.remove, cids | {root})
                raise NodeError(f"pulling {name} ({cid}) failed: {exc}") from None
            await trio.to_thread.run_sync(store.remove, cids)
        finally:
            self._pulling.discard(cid)
        self.engine.models_changed()
        self._models = None
        await self.hash_models()
        if self.model_cids.get(name) != cid:
            if self.model_paths.get(name) == final:  # the installed files hash to another CID: never serve them
                await trio.to_thread.run_sync(shutil.rmtree, final, True)
                self.engine.models_changed()
                self._models = None
                await self.hash_models()
                raise NodeError(f"pulling {name} ({cid}) failed: the installed files hash to another CID; removed them")
            raise NodeError(f"{name} was installed at {final} but this node serves other files under that name "
                            f"({self.model_cids.get(name)}); check inference.model_dirs")
        self.scheduler.peers_changed()  # advertise the model now; open tasks for it are decided again
        if self.dht is not None:
            await self.dht.provide(cid)
        log.info("model pulled", model=name, cid=cid, **{k: v for k, v in stats.to_dict().items() if k != "root"})
        return {"model": name, "cid": cid, "path": str(final), "already_local": False,
                "files": self.model_files.get(name, []), "stats": stats.to_dict()}

    def _pin_model(self, spec: TaskSpec, i: int, local: set[str]) -> TaskSpec:
        """Pin a task to the content id of its model as this submitter resolves it: its own
        files when it serves the model, else the id most peers advertise (ties: the smallest).
        Only peers that advertise that id may claim the task. A given ``model_cid`` must be
        one some peer (or this one) advertises."""
        known = self.model_cids_known(spec.model)
        if spec.model_cid is not None:
            if spec.model_cid not in known:
                have = ", ".join(f"{c} ({len(p)} peer(s))" for c, p in sorted(known.items())) or "none"
                raise NodeError(f"task {i}: no peer serves model {spec.model!r} with content id {spec.model_cid}; known: {have}")
            return spec
        if spec.model in local and spec.model in self.model_cids:
            return spec.model_copy(update={"model_cid": self.model_cids[spec.model]})
        if not known:
            return spec  # nobody hashed it: unpinned, any peer serving the name may run it
        best = min(known, key=lambda c: (-len(known[c]), c))
        return spec.model_copy(update={"model_cid": best})

    def _workflow(self, workflow_id: str) -> Any:
        wf = self.scheduler.state.workflows.get(workflow_id)
        if wf is None:
            raise NodeError(f"unknown workflow id {workflow_id!r}; list_workflows shows the known ones")
        return wf

    def workflow_summary(self, workflow_id: str) -> dict[str, Any]:
        return workflow_summary(self.scheduler.state, self._workflow(workflow_id))

    def workflow_status(self, workflow_id: str, include_results: bool = False, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        wf = self._workflow(workflow_id)
        if offset < 0:
            raise NodeError("offset must be >= 0")
        limit = len(wf.task_ids) if limit is None else limit
        if limit < 0:
            raise NodeError("limit must be >= 0")
        try:  # O(1) + O(page): counts are kept by the fold, the page is a slice (or the snapshot's chunks it covers)
            return snapshot_pages.status_of(
                self.scheduler.state, wf, self.snapshot_pages, include_results=include_results, offset=offset, limit=limit,
                load_block=self._load_block, waiting=self._waiting_reason() if wf.replicas > 1 and limit > 0 else None)
        except SnapshotError as exc:
            raise NodeError(f"workflow {workflow_id} is compacted and its snapshot cannot be read here: {exc}") from None

    async def warm_status(self, workflow_id: str, offset: int = 0, limit: int | None = None) -> None:
        """Decode, on a worker thread, the snapshot chunks a status page of a dropped workflow
        will read (up to 2 MiB each), so that ``workflow_status`` finds them decoded instead of
        holding the event loop; nothing for any other workflow, or for more chunks than are kept."""
        gone = self.scheduler.state.dropped.get(workflow_id)
        if gone is None or offset < 0 or (limit is not None and limit <= 0):
            return
        n = gone.total if limit is None else limit
        pages = self.snapshot_pages
        if 0 < pages.chunks_for(gone, offset, n) <= pages.keep:
            try:
                await trio.to_thread.run_sync(pages.records, gone, offset, n)
            except SnapshotError:
                pass  # workflow_status says it, in one line

    def _waiting_reason(self) -> Callable[[Any, Any], str | None]:
        """For one status page: why an undecided replicated task waits, when its open slots
        that nobody holds outnumber the eligible live peers (serving its model and content id,
        allowed by the tag, not outvoted too often) that hold no slot of it yet; each peer runs
        one slot of a task, so it waits for more peers (or for one to come back)."""
        from p2p.scheduler.policy import allowed
        from p2p.scheduler.replicas import split_index

        state = self.scheduler.state
        live = self.scheduler.peers.live_peers()
        limit = self.config.scheduler.max_outvoted
        eligible: dict[tuple[str, str | None, str], list[str]] = {}

        def why(task: Any, wf: Any) -> str | None:
            key = (task.spec.model, task.spec.model_cid, wf.tag.value)
            if key not in eligible:
                eligible[key] = [p.peer_id for p in live if allowed(p, task, wf) and state.outvoted.get(p.peer_id, 0) <= limit]
            index = split_index(task.index, len(wf.task_ids))[0]
            v = state.verdict(wf, index)
            if v.decided:
                return None
            held: set[str] = set()
            free = 0
            for t in state.slots_of(wf, index)[:v.open]:
                res, own = t.result, t.owner()
                if res is not None:
                    held.add(res.peer)
                elif own is not None and t.fail_for(t.attempt) is None:
                    held.add(own.peer)
                elif state.task_status(t) not in (TaskStatus.DONE, TaskStatus.FAILED):
                    free += 1
            avail = [p for p in eligible[key] if p not in held]
            if free <= len(avail):
                return None
            return (f"needs {free} more distinct peer(s) serving {task.spec.model!r} for its replicas; "
                    f"{len(avail)} eligible peer(s) alive that hold none of its replicas")

        return why

    def _load_block(self, cid: Any) -> dict[str, Any] | None:
        data = self.clock.get_block(cid)
        return None if data is None else codec.decode(data)

    async def wait_for_workflow(
        self, workflow_id: str, timeout_s: float, progress: ProgressFn | None = None
    ) -> None:
        """Wait until the workflow ends or the timeout passes; report progress as it moves."""
        if not isinstance(timeout_s, (int, float)) or math.isnan(timeout_s) or math.isinf(timeout_s) or timeout_s < 0:
            raise NodeError(f"timeout_s must be a finite number of seconds >= 0, got {timeout_s!r}")
        self._workflow(workflow_id)
        done_states = {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
        last = -1
        with trio.move_on_after(max(0.0, timeout_s)):
            while True:
                state = self.scheduler.state
                wf = self._workflow(workflow_id)  # looked up each round: never a stale object
                counts = workflow_summary(state, wf)
                finished = counts["completed"] + counts["failed"] + counts["cancelled"]
                if progress is not None and finished != last:
                    last = finished
                    await progress(finished, counts["total"], f"{counts['completed']}/{counts['total']} completed")
                if state.workflow_status(wf) in done_states:
                    return
                await self.scheduler.changed.wait()

    def _check_submitter(self, wf: Any, verb: str) -> None:
        """Only the submitter steers a workflow; the fold ignores anyone else's cancel or
        reprioritise, so refuse here, with the reason, rather than write an op that counts
        for nothing."""
        if wf.submitter != self.peer_id:
            raise NodeError(f"workflow {wf.workflow_id} was submitted by peer {wf.submitter}; only that peer may {verb} it "
                            f"(this is peer {self.peer_id})")

    async def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        wf = self._workflow(workflow_id)
        self._check_submitter(wf, "cancel")
        terminal = {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
        if not wf.cancelled and self.scheduler.state.workflow_status(wf) not in terminal:
            self.scheduler.cancel(workflow_id)
            await self.scheduler.durable()
        return self.workflow_summary(workflow_id)

    async def set_workflow_priority(self, workflow_id: str, priority: int) -> dict[str, Any]:
        wf = self._workflow(workflow_id)
        if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise NodeError(f"priority must be an integer from {MIN_PRIORITY} (highest) to {MAX_PRIORITY} (lowest), got {priority!r}")
        self._check_submitter(wf, "reprioritise")
        self.scheduler.reprioritize(workflow_id, priority)
        await self.scheduler.durable()
        return self.workflow_summary(workflow_id)

    def list_workflows(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if state is not None and state not in {s.value for s in WorkflowStatus}:
            raise NodeError(f"unknown state {state!r}; use one of: {', '.join(s.value for s in WorkflowStatus)}")
        if limit < 1:
            raise NodeError("limit must be >= 1")
        st = self.scheduler.state
        # newest first, read off the fold's listing index: O(limit), never a sort of every workflow
        return [workflow_summary(st, wf) for wf in st.listed(None if state is None else WorkflowStatus(state), limit)]

    async def run_inference(self, model: str, inputs: list[str], task: str | None = None) -> dict[str, Any]:
        """The direct path: run now, through the batching executor, on this peer when it serves
        ``model``, else on a connected peer that does (p2p.remote_infer; ``peer`` says which)."""
        from p2p.protocols.infer import MAX_TEXTS
        from p2p.remote_infer import check_outputs, infer_here, infer_on_peer, served_cid

        if not inputs:
            raise NodeError("inputs is empty; give at least one text")
        cap = self.config.scheduler.max_input_chars
        for i, text in enumerate(inputs):
            if len(text) > cap:
                raise NodeError(f"input {i} is {len(text)} characters; the maximum is {cap}")
        if model in self.local_models():  # names this node lists, never arbitrary paths
            reply, peer = await infer_here(self, model, list(inputs), task), self.peer_id
        else:
            if task is not None:
                from inference.errors import InferenceError
                from inference.tasks import normalize_task

                try:
                    task = normalize_task(task)  # the aliases the local engine accepts
                except InferenceError as exc:
                    raise NodeError(str(exc)) from None
            if len(inputs) > MAX_TEXTS:
                raise NodeError(f"{len(inputs)} inputs for a model a peer runs: at most {MAX_TEXTS} per call "
                                "(submit_workflow for more)")
            if any(not t for t in inputs):
                raise NodeError("an input is empty")
            reply, peer = await infer_on_peer(self, model, served_cid(self, model), list(inputs), task, check_outputs)
        return {"model": model, "task": reply.task, "backend": reply.backend, "device": reply.device,
                "peer": peer, "outputs": reply.outputs}

    def self_info(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.config.node_name,
            "addrs": self.listen_addrs(),
            "hardware": self.hardware(),
            "models": self.local_models(),
            "model_cids": self.model_cids,
            "queue": self.scheduler.local_queue(),
            "capacity": self.capacity,
            "workers": _dump(self.workers_summary()),
        }

    def list_peers(self) -> dict[str, Any]:
        peers = []
        for rec in self.peers.records():
            hb = rec.heartbeat
            if hb.peer_id == self.peer_id:
                continue
            peers.append({
                "peer_id": hb.peer_id, "name": hb.name, "addrs": hb.addrs, "hardware": hb.hardware,
                "models": hb.models, "model_cids": hb.model_cids, "queue": hb.queue, "capacity": hb.capacity,
                "last_seen_s": round(self.peers.age_s(rec), 3),
                "rtt_ms": None if rec.rtt_ms is None or math.isnan(rec.rtt_ms) else rec.rtt_ms,
                "compatible": not rec.incompatible,
                "incompatible_keys": list(rec.incompatible),
                "outvoted": self.scheduler.state.outvoted.get(hb.peer_id, 0),
                "workers": _dump(hb.workers),
                "connection": self.net.connection_kind(hb.peer_id) if self.net is not None else None,
            })
        return {"self": self.self_info(), "peers": peers}

    def clock_info(self) -> dict[str, Any]:
        return {"heads": [str(c) for c in self.clock.heads()], "hash": self.clock.get_hash(), "events": len(self.clock),
                "db_bytes": self.clock.db_bytes(), "forked": self.scheduler.state.forked_authors()[:16]}

    def node_info(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.config.node_name,
            "version": VERSION,
            "addrs": self.listen_addrs(),
            "hardware": self.hardware(),
            "models": self.local_models(),
            "data_dir": str(self.config.data_dir),
            "uptime_s": round(time.time() - self.started_at, 3),
            "clock": self.clock_info(),
            "workflows": len(self.scheduler.state.workflows),
            "queue": self.scheduler.local_queue(),
            "cache": self.cache.info() if self.cache is not None else {"enabled": False},
            "workers": self.engine.workers_info(),
            "compaction": {"enabled": self.config.clock.compact, **self.compactor.info(), **self.pruner.info(), **self.expiry.info(),
                           "joined": self.adopter.info() if self.adopter is not None else None},
            "replication": self.replicator.stats() if self.replicator is not None else {"enabled": False},
            "dht": self.dht.stats.as_dict() if self.dht is not None else {"mode": "off"},
            "relay": self.net.relays.info() if self.net is not None and self.net.relays is not None else {"service": False},
        }


def _dump(workers: WorkersSummary | None) -> dict[str, Any] | None:
    return workers.model_dump() if workers is not None else None


def _remove_other_staging(folder: Path, keep: set[str]) -> None:
    """Staging folders of interrupted pulls, but those in ``keep`` (blocking: a thread)."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def _canonical_cid(text: str) -> str | None:
    """``text`` as the one printed form of its CID (base32 CIDv1), None if it is not a CID: a
    peer could otherwise advertise one CID in two spellings (upper case, another base) and
    win the tie-break by string order, or one that does not parse and fail every pull."""
    try:
        from p2p.content.unixfs import to_cid

        return str(to_cid(bytes(CID.decode(text.strip()))))
    except Exception:  # noqa: BLE001 - multiformats raises several types
        return None
