"""TransferAgent: links, pulls and pushes of one initialized engine.

Statuses are llmdd.LLMStatusCode members; LLMException is raised only for bad Python arguments
(and LLM_FEATURE_NOT_ENABLED when Mooncake is missing). A link is one control connection (a
Channel) used both ways: the side that linked and the side that listened may each pull and push
on it, moving bytes with batched reads (pull) or writes (push) on their own Mooncake engine.
"""
import concurrent.futures
import contextlib
import ipaddress
import logging
import socket
import threading
import time

from .._checks import require, require_int
from .._desc import LLMStatusCode
from .._limits import MAX_CLUSTERS_PER_CALL, UINT64
from .._options import RDMA_SERVICE_LEVELS, RDMA_TRAFFIC_CLASSES, TRANSFER_PROTOCOLS, OptionError, parse_ip_port
from .._status import LLMException, engine_status
from . import _auth
from . import _protocol as wire
from ._channel import DRAIN_SECONDS, Channel, Keepalive, LinkFailure
from ._listener import ControlListener, Listeners
from ._engines import engines_for, hand_back
from ._mooncake import claim_environment, engine_module, rdma_environment
from ._mover import Mover
from ._same_host import link_fields, shared_pid
from ._server import CacheServer
from ._sockets import track

log = logging.getLogger("llmdd.transfer")

MAX_ACCEPTED_LINKS = 64      # links other clusters made to this one, at a time
SUCCESS = LLMStatusCode.LLM_SUCCESS
PARAM_INVALID = LLMStatusCode.LLM_PARAM_INVALID


def _parse_ip(ip, what):
    if type(ip) is int and not isinstance(ip, bool):
        try:
            return str(ipaddress.IPv4Address(ip))
        except ValueError:
            pass
    elif isinstance(ip, str):
        try:
            return str(ipaddress.IPv4Address(ip))
        except ValueError:
            pass
    raise LLMException(f"{what} ip {ip!r} is not an IPv4 address", PARAM_INVALID)


def _parse_port(port, what):
    require(type(port) is int and 0 <= port <= 65535, f"{what} port {port!r} is not in [0, 65535]", PARAM_INVALID)
    return port


def _parse_listen_ip_info(listen_ip_info):
    """'ip:port' (llm.ListenIpInfo, by Initialize's rule) -> (ip, port); port 0 lets the system pick one."""
    try:
        if not isinstance(listen_ip_info, str):
            raise OptionError(f"listen_ip_info {listen_ip_info!r} is not 'ip:port'")
        return parse_ip_port(listen_ip_info, "listen_ip_info")
    except OptionError as error:
        raise LLMException(str(error), PARAM_INVALID) from None


# The agent is driven by the drop-in and the C++ API's adapter, which convert their callers'
# arguments first; these checks refuse, with LLM_PARAM_INVALID, what no caller should pass.

def _check_int(name, value, bounds):
    require_int(name, value, bounds, PARAM_INVALID)


def _check_timeout(timeout_ms):
    require(type(timeout_ms) is int and timeout_ms > 0, f"timeout {timeout_ms!r} must be a positive number of "
            "milliseconds", PARAM_INVALID)


def _check_agent_arguments(cluster_id, protocol, device_name, sync_timeout_ms, link_secret, rdma_traffic_class,
                           rdma_service_level):
    _check_int("cluster_id", cluster_id, UINT64)
    require(link_secret is None or (isinstance(link_secret, str) and link_secret),
            "link_secret must be None or a non-empty str", PARAM_INVALID)
    require(protocol in TRANSFER_PROTOCOLS, f"protocol {protocol!r} is not one of {TRANSFER_PROTOCOLS}",
            PARAM_INVALID)
    require(isinstance(device_name, str), "device_name must be a str", PARAM_INVALID)
    _check_timeout(sync_timeout_ms)
    if protocol == "rdma":   # what Mooncake's rdma transport takes; other protocols ignore them
        for name, value, bounds in (("rdma_traffic_class", rdma_traffic_class, RDMA_TRAFFIC_CLASSES),
                                    ("rdma_service_level", rdma_service_level, RDMA_SERVICE_LEVELS)):
            if value is not None:
                _check_int(name, value, bounds)


def _mooncake_environment(protocol, rdma_traffic_class, rdma_service_level, in_process):
    """The Mooncake variables of an agent's engines (_mooncake.rdma_environment). In-process
    engines' are this process's: claimed at once (LLMException, LLM_PARAM_INVALID, when they cannot
    be), before another agent's first link has Mooncake load and read the environment without them."""
    environment = rdma_environment(protocol, rdma_traffic_class, rdma_service_level)
    if in_process:
        claim_environment(environment)
    return environment


def _link_target(cluster):
    """(remote cluster id, (ip, port), local ip or None); LLM_PARAM_INVALID when the ip infos
    name no peer (as CANN, a status of that cluster, not of the call)."""
    remote_cluster_id = cluster.remote_cluster_id
    _check_int("remote_cluster_id", remote_cluster_id, UINT64)
    remote_ip_infos, local_ip_infos = list(cluster.remote_ip_infos), list(cluster.local_ip_infos)
    try:
        if len(remote_ip_infos) != 1 or len(local_ip_infos) > 1:
            raise LLMException(f"cluster {remote_cluster_id}: one remote ip info and at most one local one are "
                               f"allowed, not {len(remote_ip_infos)} and {len(local_ip_infos)}", PARAM_INVALID)
        remote_ip, remote_port = remote_ip_infos[0]
        remote = (_parse_ip(remote_ip, "remote"), _parse_port(remote_port, "remote"))
        local_ip = _parse_ip(local_ip_infos[0][0], "local") if local_ip_infos else None
    except LLMException as error:
        log.warning("%s", error)
        return PARAM_INVALID
    return remote_cluster_id, remote, local_ip


def _engine_on(engine_address, peer_ip):
    """Whether every Mooncake engine a peer names listens at the address its control connection
    comes from: a peer may not point this side's writes at a third party's engine."""
    return all(part.rpartition(":")[0] == peer_ip for part in engine_address.split(","))


def _drop_dead_mooncake(agent):
    """When an agent's data-plane helper died (a peer crashed it, or it was killed), the agent
    forgets its engines, and its links end too: their peers know the helper's ports, which are
    gone. A link this side made stays broken until unlinked, and can then be made again, on the
    new engines the next link starts."""
    with agent._lock:
        engine = agent._mooncake
        if engine is None or engine.alive:
            return
        agent._mooncake = None
        channels = [*agent._links.values(), *agent._accepted.values()]
    log.warning("the Mooncake engines at %s are gone: %d links end", engine.address, len(channels))
    for channel in channels:
        channel.shutdown()
    engine.close()


def link_status(agent, remote_cluster_id):
    """Whether the link `agent` made to a cluster is up: SUCCESS, LLM_NOT_YET_LINK when it made none
    (or it was unlinked), LLM_LINK_FAILED when it broke (the peer closed it, or fell silent past
    the keepalive limit) and waits to be unlinked. Links other clusters made to it do not count:
    CANN's check is the linking side's."""
    _check_int("remote_cluster_id", remote_cluster_id, UINT64)
    _drop_dead_mooncake(agent)   # a dead data-plane helper breaks every link
    with agent._lock:
        channel = agent._links.get(remote_cluster_id)
    if channel is None:
        return LLMStatusCode.LLM_NOT_YET_LINK
    return LLMStatusCode.LLM_LINK_FAILED if channel.broken else SUCCESS


# The Mover's calls, which a TransferAgent offers as its own: agent.pull_cache(...) and so on.
MOVER_CALLS = ("pull_cache", "pull_blocks", "push_cache", "push_blocks", "push_layer", "push_layer_to_addresses",
               "hold_destination", "release_destination")


class LinkTarget:
    """A cluster to link or unlink, as the agent takes it from either API: its id, and its local
    and remote (dotted ip, port) pairs."""

    __slots__ = ("remote_cluster_id", "local_ip_infos", "remote_ip_infos")

    def __init__(self, remote_cluster_id, local_ip_infos, remote_ip_infos):
        self.remote_cluster_id = remote_cluster_id
        self.local_ip_infos = local_ip_infos
        self.remote_ip_infos = remote_ip_infos


class TransferAgent:
    """The transfer layer of one initialized engine: its links, its listeners, its Mooncake engine,
    and the pulls and pushes (a Mover) over them.

    registry: the engine's CacheRegistry (entry, find, pin, release_key). listen_ip_info: "ip:port"
    to serve peers on (None: none; `listeners` opens more on demand). protocol: Mooncake's
    ("tcp", "rdma", "ascend"); device_name: the device where the protocol needs one.
    sync_timeout_ms (llm.SyncKvCacheWaitTime) bounds each control round trip of a transfer, and
    the whole handshake of a link made to this side. link_secret (llmdd.LinkSecret): a str both
    sides of every link must prove they hold (docs/security.md), or None: anyone may link.
    mooncake_in_process (llmdd.MooncakeInProcess): Mooncake in this process rather than in a
    data-plane helper process (_engines). rdma_traffic_class, rdma_service_level: those of its
    Mooncake engines over rdma (llm.RdmaTrafficClass, llm.RdmaServiceLevel), or None: Mooncake's.
    Which rules a transfer follows is its local cache's (_kind_rules): CANN's Python rules, where
    blocks caches and whole caches are apart and keys say which is meant, or the C++ API's, where a
    block is a batch entry of any cache."""

    def __init__(self, registry, cluster_id, listen_ip_info=None, protocol="tcp", device_name="",
                 sync_timeout_ms=1000, link_secret=None, same_host=None, mooncake_in_process=False,
                 rdma_traffic_class=None, rdma_service_level=None):
        _check_agent_arguments(cluster_id, protocol, device_name, sync_timeout_ms, link_secret,
                               rdma_traffic_class, rdma_service_level)
        self._registry = registry
        self.cluster_id = cluster_id
        self._protocol = protocol
        self._device_name = device_name
        self._mooncake_in_process = bool(mooncake_in_process)
        self._mooncake_environment = _mooncake_environment(protocol, rdma_traffic_class, rdma_service_level,
                                                           self._mooncake_in_process)
        self._sync_timeout_s = sync_timeout_ms / 1000
        self._link_secret = None if link_secret is None else link_secret.encode()
        self._lock = threading.Lock()
        self._links = {}        # remote cluster id -> Channel of a link this side made
        self._accepted = {}     # remote cluster id -> Channel of a link that cluster made to this one
        self._answering = {}    # remote cluster id -> Event set once its link, being answered, is usable
        self._closed = False
        self._mooncake = None
        self._in_use = 0        # transfers and registrations using self._mooncake now
        self._unused = threading.Condition(self._lock)
        self._keepalive = Keepalive(f"llmdd-keepalive-{cluster_id}")
        # The same-host path (_same_host): what this side tells a peer at LINK, whose answer in
        # kind says whether the two share IPC memory.
        self._same_host = same_host
        self._same_host_fields = link_fields(same_host)
        self._server = CacheServer(registry, self._using_mooncake, same_host)
        mover = Mover(registry, self._link_for_transfer, self._using_mooncake, self._sync_timeout_s, same_host)
        for transfer in MOVER_CALLS:
            setattr(self, transfer, getattr(mover, transfer))
        self.listeners = Listeners(lambda host, port: ControlListener(
            host, port, cluster_id, self._mooncake_for_host, self._accept_link, self._activate, self._sync_timeout_s,
            self._links_from, self._link_secret, self._same_host_fields), unsecured=link_secret is None)
        self.listen_address = None   # (ip, port) of the listener on listen_ip_info; others listen on demand
        if listen_ip_info is not None:
            self.listen_address = self.listeners.open(*_parse_listen_ip_info(listen_ip_info))

    def _mooncake_for_host(self, host):
        """This agent's Mooncake engines, started on `host` (the address peers reach us at) the
        first time one is needed, and again after its data-plane helper died."""
        _drop_dead_mooncake(self)
        with self._lock:
            if self._closed:
                raise LLMException("the transfer agent is closed", LLMStatusCode.LLM_FAILED)
            if self._mooncake is None:
                self._mooncake = engines_for(host, self._protocol, self._device_name, self._mooncake_in_process,
                                             self._mooncake_environment)
            return self._mooncake

    def close(self):
        """Ends every link and the listener without telling peers. Transfers under way end first,
        and peers get DRAIN_SECONDS to unpin what they move: bounded, at once for a peer that
        died, and within the keepalive limit for one that vanished."""
        self.listeners.close()
        with self._lock:
            self._closed = True
            channels = [*self._links.values(), *self._accepted.values()]
            self._links, self._accepted = {}, {}
            engine, self._mooncake = self._mooncake, None
        for channel in channels:
            with channel.transfer_lock:   # a transfer that takes it after this sees the agent closed
                pass
        deadline = time.monotonic() + DRAIN_SECONDS
        for channel in channels:
            channel.drain(max(0.0, deadline - time.monotonic()))
            channel.shutdown()
        for channel in channels:
            channel.join()
        self._keepalive.stop()
        if engine is not None:
            with self._lock:   # a transfer on a link already dropped may still use them: bounded
                unused = self._unused.wait_for(lambda: self._in_use == 0, DRAIN_SECONDS)
            if unused:
                hand_back(engine)
            else:
                engine.close()   # still in use: stopped, never handed to another agent

    def _accept_link(self, connection, body):
        """A Channel for the link `body`'s cluster is making to this one, or None when this agent
        is closing, has too many links, or that cluster has a link to this one already: a LINK
        claiming a linked cluster's id never takes its link over. A link whose peer closed its
        side is over (the peer unlinked by force, or died, and links again). A link this side
        made to the cluster stays apart (CANN's hixl sample links both ways). The listener answers
        the link, then _activate()s it."""
        remote_cluster_id = body["cluster_id"]
        if not _engine_on(body["engine"], connection.getpeername()[0]):
            log.warning("a link from %s naming Mooncake engines at %s refused", connection.getpeername()[0],
                        body["engine"])
            return None
        # One link of a cluster is answered at a time: a LINK that comes while the cluster's
        # previous one is being answered (its peer had the answer and closed at once) waits for it.
        deadline = time.monotonic() + self._sync_timeout_s
        while True:
            with self._lock:
                if self._closed or len(self._accepted) >= MAX_ACCEPTED_LINKS:
                    return None
                earlier = self._answering.get(remote_cluster_id)
                if earlier is None:
                    answering = self._answering[remote_cluster_id] = threading.Event()
                    current = self._accepted.get(remote_cluster_id)
                    break
            if not earlier.wait(max(0.0, deadline - time.monotonic())):
                return None
        channel = None
        try:
            if current is None or current.over():
                channel = Channel(connection, remote_cluster_id, body["engine"], self._server, self._sync_timeout_s,
                                  self._link_ended, shared_pid(self._same_host_fields, body))
            else:
                log.warning("a link claiming cluster %d, which is linked already, refused", remote_cluster_id)
        finally:
            if channel is None:
                with self._lock:
                    del self._answering[remote_cluster_id]
                answering.set()
        return channel

    def _activate(self, channel):
        """An accepted link, answered: usable from now on (a transfer could otherwise send its
        request before the peer had the answer to its LINK)."""
        remote_cluster_id = channel.remote_cluster_id
        with self._lock:
            previous = None
            if self._closed:
                channel.shutdown()   # its reader ends at once
            else:
                previous = self._accepted.get(remote_cluster_id)   # over: _accept_link took the new link for that
                self._accepted[remote_cluster_id] = channel
            answered = self._answering.pop(remote_cluster_id, None)
        channel.start()
        self._keepalive.watch(channel)
        if answered is not None:
            answered.set()
        if previous is not None:
            previous.close()

    def _links_from(self, host):
        """How many links `host` made to this agent (the listener caps them with handshakes)."""
        with self._lock:
            return sum(channel.peer_host == host for channel in self._accepted.values())

    def _link_ended(self, channel, unlinked):
        """A channel's reader stopped. A link the peer made, or one it unlinked, is gone; a link
        this side made whose connection failed stays, broken, until it is unlinked."""
        with self._lock:
            remote_cluster_id = channel.remote_cluster_id
            if self._accepted.get(remote_cluster_id) is channel:
                del self._accepted[remote_cluster_id]
            elif unlinked and self._links.get(remote_cluster_id) is channel:
                del self._links[remote_cluster_id]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Links

    def link(self, clusters, timeout_ms):
        """(status, [status per cluster]): SUCCESS only when every cluster linked."""
        _check_timeout(timeout_ms)
        clusters = list(clusters)
        if self._closed:
            return LLMStatusCode.LLM_FAILED, [LLMStatusCode.LLM_FAILED] * len(clusters)
        if len(clusters) > MAX_CLUSTERS_PER_CALL:
            return LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT, [LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT] * len(clusters)
        targets = [_link_target(cluster) for cluster in clusters]
        engine_module()   # LLM_FEATURE_NOT_ENABLED before anything else when Mooncake is missing
        deadline = time.monotonic() + timeout_ms / 1000
        statuses = [None] * len(targets)
        attempts = {}
        with self._lock:
            for index, target in enumerate(targets):
                if isinstance(target, LLMStatusCode):   # ip infos that name no peer: that cluster's status
                    statuses[index] = target
                elif target[0] in self._links or target[0] in attempts:
                    statuses[index] = LLMStatusCode.LLM_ALREADY_LINK
                else:
                    attempts[target[0]] = index
        if attempts:
            # In parallel, so an unreachable peer costs the call one timeout, not one each.
            with concurrent.futures.ThreadPoolExecutor(len(attempts), thread_name_prefix="llmdd-link") as pool:
                futures = {index: pool.submit(self._link_one, *targets[index], deadline)
                           for index in attempts.values()}
            for index, future in futures.items():
                statuses[index] = future.result()
        return next((status for status in statuses if status != SUCCESS), SUCCESS), statuses

    def _link_one(self, remote_cluster_id, remote, local_ip, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return LLMStatusCode.LLM_TIMEOUT
        try:
            connection = track(socket.create_connection(remote, timeout=remaining,
                                                        source_address=(local_ip, 0) if local_ip else None))
        except socket.timeout:
            return LLMStatusCode.LLM_TIMEOUT
        except OSError as error:
            log.warning("link to cluster %d at %s:%d failed: %s", remote_cluster_id, *remote, error)
            return LLMStatusCode.LLM_LINK_FAILED
        return self.link_over(connection, remote_cluster_id, deadline)

    def link_over(self, connection, remote_cluster_id, deadline):
        """The status of linking `remote_cluster_id` by the time.monotonic() `deadline` over
        `connection`, which this side opened to that cluster's listener and which is the link's
        from then on, or closed; shutting it down meanwhile ends the attempt at once."""
        remote = None
        try:
            remote = connection.getpeername()[:2]
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            engine = self._mooncake_for_host(connection.getsockname()[0])
            if self._link_secret is not None:
                _auth.authenticate_listening_side(connection, self._link_secret, deadline)
            body = {"cluster_id": self.cluster_id, "to_cluster_id": remote_cluster_id, "engine": engine.address,
                    "protocol": self._protocol, **self._same_host_fields}
            wire.send(connection, wire.MessageType.LINK, 0, body, deadline)
            reply_type, reply_id, reply = wire.receive(connection, deadline)
            if reply_type != wire.MessageType.LINK_REPLY or reply_id != 0:
                raise wire.ProtocolError(f"{reply_type.name} #{reply_id} answers LINK #0")
            if reply["status"] != SUCCESS or reply["cluster_id"] != remote_cluster_id \
                    or not _engine_on(reply["engine"], remote[0]):
                log.warning("cluster %d at %s refused the link: %d", remote_cluster_id, remote, reply["status"])
                return LLMStatusCode.LLM_LINK_FAILED
            channel = Channel(connection, remote_cluster_id, reply["engine"], self._server, self._sync_timeout_s,
                              self._link_ended, shared_pid(self._same_host_fields, reply))
            connection = None
            with self._lock:
                status = LLMStatusCode.LLM_FAILED if self._closed else SUCCESS
                if remote_cluster_id in self._links:   # another call linked it meanwhile: that link stays
                    status = LLMStatusCode.LLM_ALREADY_LINK
                if status == SUCCESS:
                    self._links[remote_cluster_id] = channel
            if status != SUCCESS:   # the link goes at once
                channel.shutdown()
            channel.start()
            self._keepalive.watch(channel)
            return status
        except socket.timeout:
            return LLMStatusCode.LLM_TIMEOUT
        except LLMException as error:
            log.warning("link to cluster %d: %s", remote_cluster_id, error)
            return engine_status(error.status_code)
        except (OSError, wire.ProtocolError) as error:
            log.warning("link to cluster %d at %s failed: %s", remote_cluster_id, remote, error)
            return LLMStatusCode.LLM_LINK_FAILED
        finally:
            if connection is not None:
                connection.close()

    def unlink(self, clusters, timeout_ms, force=False, by_id=False):
        """(status, [status per cluster]) of ending links, this side's or the peer's (one link
        serves both). force tears down only this side; otherwise the peer is told, and a peer
        that cannot be told leaves the link in place (LLM_UNLINK_FAILED). A cluster not linked
        is SUCCESS (nothing to end, as in CANN). Clusters are named by remote_cluster_id; unless
        force or by_id (the hixl backend), each must also carry its one remote ip info, as CANN's
        default backend checks (LLM_PARAM_INVALID for that cluster)."""
        _check_timeout(timeout_ms)
        require(type(force) is bool, "force must be a bool", PARAM_INVALID)
        clusters = list(clusters)
        if len(clusters) > MAX_CLUSTERS_PER_CALL:
            return LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT, [LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT] * len(clusters)
        statuses = []
        for cluster in clusters:
            if not (force or by_id):
                target = _link_target(cluster)
                if isinstance(target, LLMStatusCode):
                    statuses.append(target)
                    continue
            remote_cluster_id = cluster.remote_cluster_id
            _check_int("remote_cluster_id", remote_cluster_id, UINT64)
            statuses.append(self._unlink_one(remote_cluster_id, timeout_ms, force))
        return next((status for status in statuses if status != SUCCESS), SUCCESS), statuses

    def _unlink_one(self, remote_cluster_id, timeout_ms, force):
        with self._lock:
            links = self._links if remote_cluster_id in self._links else self._accepted
            channel = links.get(remote_cluster_id)
        if channel is None:
            return SUCCESS
        # This side's transfer on the link ends first, then the peer's on the pins it holds here.
        with channel.transfer_lock:
            channel.drain()
            if not force:
                try:
                    channel.request(wire.MessageType.UNLINK, {"cluster_id": self.cluster_id}, timeout_ms / 1000)
                except LinkFailure:
                    if not channel.unlinked_by_peer:   # both sides unlinking at once both succeed
                        return LLMStatusCode.LLM_UNLINK_FAILED
            with self._lock:
                if links.get(remote_cluster_id) is channel:
                    del links[remote_cluster_id]
            channel.close()
        return SUCCESS

    def _link_for_transfer(self, remote_cluster_id):
        """The link a transfer with a cluster takes (one this side made, unless it broke), or None.
        A link the cluster is making to this one is waited for: the peer may ask this side to pull
        as soon as it has the answer to its LINK, before the listener has made the link usable."""
        with self._lock:
            link = self._usable_link(remote_cluster_id)
            answering = self._answering.get(remote_cluster_id) if link is None else None
        if answering is not None and answering.wait(self._sync_timeout_s):
            with self._lock:
                link = self._usable_link(remote_cluster_id)
        return link

    def _usable_link(self, remote_cluster_id):
        made, accepted = self._links.get(remote_cluster_id), self._accepted.get(remote_cluster_id)
        return made if made is not None and not made.broken else accepted or made

    @contextlib.contextmanager
    def _using_mooncake(self):
        """This agent's Mooncake engines for one transfer or registration, or None once it closed
        or its helper died; close() hands them back to the process only when nothing uses them."""
        _drop_dead_mooncake(self)
        with self._lock:
            engine = self._mooncake
            if engine is not None:
                self._in_use += 1
        try:
            yield engine
        finally:
            if engine is not None:
                with self._lock:
                    self._in_use -= 1
                    self._unused.notify_all()

    def linked_clusters(self):
        """The clusters linked to this one, either way."""
        with self._lock:
            return sorted({*self._links, *self._accepted})
