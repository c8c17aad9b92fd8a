"""TransferAgent: links, pulls and pushes of one initialized engine.

Statuses are llmdd.LLMStatusCode members; LLMException is raised only for bad Python arguments
(and LLM_FEATURE_NOT_ENABLED when Mooncake is missing). A link is one control connection (a
Channel) used both ways: the side that linked and the side that listened may each pull and push
on it, moving bytes with batched reads (pull) or writes (push) on their own Mooncake engine.
"""
import concurrent.futures
import contextlib
import errno
import ipaddress
import logging
import socket
import threading
import time

from .._datadist import LLMException
from .._desc import LLMStatusCode
from .._options import OptionError, parse_ip_port
from . import _plan
from . import _protocol as wire
from ._channel import DRAIN_SECONDS, Channel, LinkFailure
from ._listener import ControlListener
from ._mooncake import Engine, engine_module
from ._server import CacheServer

log = logging.getLogger("llmdd.transfer")

MAX_CLUSTERS_PER_CALL = 16   # LLM_CLUSTER_NUM_EXCEED_LIMIT above this (spec section 1)
MAX_ACCEPTED_LINKS = 64      # links other clusters made to this one, at a time
SUCCESS = LLMStatusCode.LLM_SUCCESS
PROTOCOLS = ("tcp", "rdma", "ascend")


def _status(code):
    try:
        return LLMStatusCode(code)
    except ValueError:
        return LLMStatusCode.LLM_FAILED


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
    raise LLMException(f"{what} ip {ip!r} is not an IPv4 address", LLMStatusCode.LLM_PARAM_INVALID)


def _parse_port(port, what):
    if type(port) is not int or not 0 <= port <= 65535:
        raise LLMException(f"{what} port {port!r} is not in [0, 65535]", LLMStatusCode.LLM_PARAM_INVALID)
    return port


def _parse_listen_ip_info(listen_ip_info):
    """'ip:port' (llm.ListenIpInfo, by Initialize's rule) -> (ip, port); port 0 lets the system pick one."""
    try:
        if not isinstance(listen_ip_info, str):
            raise OptionError(f"listen_ip_info {listen_ip_info!r} is not 'ip:port'")
        return parse_ip_port(listen_ip_info, "listen_ip_info")
    except OptionError as error:
        raise LLMException(str(error), LLMStatusCode.LLM_PARAM_INVALID) from None


def _check_int(name, value, low, high):
    if type(value) is not int or not low <= value <= high:
        raise LLMException(f"{name} {value!r} is not an int in [{low}, {high}]", LLMStatusCode.LLM_PARAM_INVALID)


def _check_timeout(timeout_ms):
    if type(timeout_ms) is not int or timeout_ms <= 0:
        raise LLMException(f"timeout {timeout_ms!r} must be a positive number of milliseconds",
                           LLMStatusCode.LLM_PARAM_INVALID)


def _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer):
    for name, layer_range in (("src_layer_range", src_layer_range), ("dst_layer_range", dst_layer_range)):
        if layer_range is not None and not isinstance(layer_range, range):
            raise LLMException(f"{name} must be a range or None, not {type(layer_range).__name__}",
                               LLMStatusCode.LLM_PARAM_INVALID)
    _check_int("tensor_num_per_layer", tensor_num_per_layer, 0, wire.UINT32_MAX)


def _check_blocks(name, blocks):
    if not isinstance(blocks, (list, tuple)) or any(type(b) is not int for b in blocks):
        raise LLMException(f"{name} must be a list or tuple of ints", LLMStatusCode.LLM_PARAM_INVALID)
    return list(blocks)


def _key_fields(key):
    """The wire form of a drop-in key; a dict is taken as a wire key already (the engine's CacheIndex)."""
    if type(key) is dict:
        if not wire.is_key(key):
            raise LLMException(f"{key!r} is not a key of the control protocol", LLMStatusCode.LLM_PARAM_INVALID)
        return key
    try:
        return wire.key_fields(key)
    except TypeError as error:
        raise LLMException(str(error), LLMStatusCode.LLM_PARAM_INVALID) from None


def _require_kind(layout, blocks, side):
    if layout.is_blocks_cache != blocks:
        raise _plan.PlanError(f"the {side} cache must {'' if blocks else 'not '}be a blocks cache")


class TransferAgent:
    """The transfer layer of one initialized engine.

    registry: the engine's CacheRegistry (entry, find, pin, release_key). listen_ip_info:
    "ip:port" to serve peers on (None: this side only links out). protocol: Mooncake's
    ("tcp", "rdma", "ascend"); device_name: the device where the protocol needs one.
    sync_timeout_ms (llm.SyncKvCacheWaitTime) bounds each control round trip of a transfer.
    blocks_caches: CANN's Python (v2) rules, where blocks caches and whole caches are apart and
    keys say which is meant; False for the C++ API, where caches are named by id and a block is
    a batch entry of any cache."""

    def __init__(self, registry, cluster_id, listen_ip_info=None, protocol="tcp", device_name="",
                 sync_timeout_ms=1000, blocks_caches=True):
        _check_int("cluster_id", cluster_id, 0, wire.UINT64_MAX)
        if protocol not in PROTOCOLS:
            raise LLMException(f"protocol {protocol!r} is not one of {PROTOCOLS}", LLMStatusCode.LLM_PARAM_INVALID)
        if not isinstance(device_name, str):
            raise LLMException("device_name must be a str", LLMStatusCode.LLM_PARAM_INVALID)
        _check_timeout(sync_timeout_ms)
        self._registry = registry
        self._blocks_caches = blocks_caches
        self.cluster_id = cluster_id
        self._protocol = protocol
        self._device_name = device_name
        self._sync_timeout_s = sync_timeout_ms / 1000
        self._lock = threading.Lock()
        self._links = {}        # remote cluster id -> Channel of a link this side made
        self._accepted = {}     # remote cluster id -> Channel of a link that cluster made to this one
        self._closed = False
        self._engine = None
        self._server = CacheServer(registry, self._engine_for_host)
        self._listener = None
        if listen_ip_info is not None:
            host, port = _parse_listen_ip_info(listen_ip_info)
            try:
                self._listener = ControlListener(host, port, cluster_id, self._engine_for_host, self._accept_link,
                                                 self._activate, self._sync_timeout_s)
            except OSError as error:
                # An address this host does not have is a bad option; a port in use is not.
                status = (LLMStatusCode.LLM_PARAM_INVALID if error.errno == errno.EADDRNOTAVAIL
                          else LLMStatusCode.LLM_FAILED)
                raise LLMException(f"cannot listen on {listen_ip_info}: {error}", status) from None

    @property
    def listen_address(self):
        """(ip, port) the control listener is bound to, or None."""
        return None if self._listener is None else self._listener.address

    def _engine_for_host(self, host):
        """This agent's Mooncake engine, started on `host` the first time one is needed (the
        address peers reach us at, so it is the right interface in a multi-homed host)."""
        with self._lock:
            if self._closed:
                raise LLMException("the transfer agent is closed", LLMStatusCode.LLM_FAILED)
            if self._engine is None:
                if host is None:
                    raise LLMException("no engine yet", LLMStatusCode.LLM_FAILED)
                self._engine = Engine(host, self._protocol, self._device_name)
            return self._engine

    def close(self):
        """Ends every link and the listener without telling peers. Transfers under way end first,
        and peers get DRAIN_SECONDS to unpin what they move: bounded, and at once for a peer
        that died."""
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            self._closed = True
            channels = [*self._links.values(), *self._accepted.values()]
            self._links, self._accepted = {}, {}
            engine, self._engine = self._engine, None
        for channel in channels:
            with channel.transfer_lock:   # a transfer that takes it after this sees the agent closed
                pass
        deadline = time.monotonic() + DRAIN_SECONDS
        for channel in channels:
            channel.drain(max(0.0, deadline - time.monotonic()))
            channel.shutdown()
        for channel in channels:
            channel.join()
        if engine is not None:
            engine.close()

    def _accept_link(self, connection, body):
        """A Channel for the link `body`'s cluster is making to this one, or None when this agent
        is closing or has too many links. The listener answers the link, then _activate()s it."""
        with self._lock:
            if self._closed or len(self._accepted) >= MAX_ACCEPTED_LINKS:
                return None
        return Channel(connection, body["cluster_id"], body["engine"], self._server, self._sync_timeout_s,
                       self._link_ended)

    def _activate(self, channel):
        """An accepted link, answered: usable from now on (a transfer could otherwise send its
        request before the peer had the answer to its LINK)."""
        remote_cluster_id = channel.remote_cluster_id
        with self._lock:
            previous = None
            if self._closed:
                channel.shutdown()   # its reader ends at once
            else:
                previous = self._accepted.get(remote_cluster_id)   # the peer linked again: the old link is over
                self._accepted[remote_cluster_id] = channel
        channel.start()
        if previous is not None:
            previous.close()

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
        targets = [self._link_target(cluster) for cluster in clusters]
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

    @staticmethod
    def _link_target(cluster):
        """(remote cluster id, (ip, port), local ip or None); LLM_PARAM_INVALID when the ip infos
        name no peer (as CANN, a status of that cluster, not of the call)."""
        remote_cluster_id = cluster.remote_cluster_id
        _check_int("remote_cluster_id", remote_cluster_id, 0, wire.UINT64_MAX)
        remote_ip_infos, local_ip_infos = list(cluster.remote_ip_infos), list(cluster.local_ip_infos)
        try:
            if len(remote_ip_infos) != 1 or len(local_ip_infos) > 1:
                raise LLMException(f"cluster {remote_cluster_id}: one remote ip info and at most one local one are "
                                   f"allowed, not {len(remote_ip_infos)} and {len(local_ip_infos)}",
                                   LLMStatusCode.LLM_PARAM_INVALID)
            remote_ip, remote_port = remote_ip_infos[0]
            remote = (_parse_ip(remote_ip, "remote"), _parse_port(remote_port, "remote"))
            local_ip = _parse_ip(local_ip_infos[0][0], "local") if local_ip_infos else None
        except LLMException as error:
            log.warning("%s", error)
            return LLMStatusCode.LLM_PARAM_INVALID
        return remote_cluster_id, remote, local_ip

    def _link_one(self, remote_cluster_id, remote, local_ip, deadline):
        connection = None
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return LLMStatusCode.LLM_TIMEOUT
            connection = socket.create_connection(remote, timeout=remaining,
                                                  source_address=(local_ip, 0) if local_ip else None)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            engine = self._engine_for_host(connection.getsockname()[0])
            body = {"cluster_id": self.cluster_id, "to_cluster_id": remote_cluster_id, "engine": engine.address,
                    "protocol": self._protocol}
            wire.send(connection, wire.MessageType.LINK, 0, body, deadline)
            reply_type, reply_id, reply = wire.receive(connection, deadline)
            if reply_type != wire.MessageType.LINK_REPLY or reply_id != 0:
                raise wire.ProtocolError(f"{reply_type.name} #{reply_id} answers LINK #0")
            if reply["status"] != SUCCESS or reply["cluster_id"] != remote_cluster_id:
                log.warning("cluster %d at %s:%d refused the link: %d", remote_cluster_id, *remote, reply["status"])
                return LLMStatusCode.LLM_LINK_FAILED
            channel = Channel(connection, remote_cluster_id, reply["engine"], self._server, self._sync_timeout_s,
                              self._link_ended)
            connection = None
            with self._lock:
                closed = self._closed
                if not closed:
                    self._links[remote_cluster_id] = channel
            if closed:   # closed while we linked: the link goes with the agent
                channel.shutdown()
            channel.start()
            return LLMStatusCode.LLM_FAILED if closed else SUCCESS
        except socket.timeout:
            return LLMStatusCode.LLM_TIMEOUT
        except LLMException as error:
            log.warning("link to cluster %d: %s", remote_cluster_id, error)
            return _status(error.status_code)
        except (OSError, wire.ProtocolError) as error:
            log.warning("link to cluster %d at %s:%d failed: %s", remote_cluster_id, *remote, error)
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
        if type(force) is not bool:
            raise LLMException("force must be a bool", LLMStatusCode.LLM_PARAM_INVALID)
        clusters = list(clusters)
        if len(clusters) > MAX_CLUSTERS_PER_CALL:
            return LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT, [LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT] * len(clusters)
        statuses = []
        for cluster in clusters:
            if not (force or by_id):
                target = self._link_target(cluster)
                if isinstance(target, LLMStatusCode):
                    statuses.append(target)
                    continue
            remote_cluster_id = cluster.remote_cluster_id
            _check_int("remote_cluster_id", remote_cluster_id, 0, wire.UINT64_MAX)
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

    def linked_clusters(self):
        """The clusters linked to this one, either way."""
        with self._lock:
            return sorted({*self._links, *self._accepted})

    # Transfers

    def pull_cache(self, remote_cluster_id, key, dst_entry, batch_index=0, size=-1, src_layer_range=None,
                   dst_layer_range=None, tensor_num_per_layer=2):
        """One batch entry of the remote cache `key` names (a CacheKey or CacheKeyByIdAndIndex)
        into entry batch_index of dst_entry. A CacheKey's reference is dropped after a success."""
        fields = _key_fields(key)
        _check_int("batch_index", batch_index, 0, wire.UINT32_MAX)
        _check_int("size", size, -1, wire.INT64_MAX)
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        if fields["kind"] == "blocks" or size == 0 or (self._blocks_caches and dst_entry.is_blocks_cache):
            return LLMStatusCode.LLM_PARAM_INVALID
        local = _plan.Layout.of_entry(dst_entry)

        def plan(remote, remote_batch_index):
            if self._blocks_caches:
                _require_kind(remote, False, "source")
            pairs = _plan.tensor_pairs(remote, local, src_layer_range, dst_layer_range, tensor_num_per_layer)
            return _plan.cache_segments(remote, local, remote_batch_index, batch_index, size, pairs)
        return self._transfer(remote_cluster_id, fields, dst_entry, plan, write=False,
                              release_key=fields["kind"] == "cache")

    def pull_blocks(self, remote_cluster_id, src_key, dst_entry, src_blocks=(), dst_blocks=(),
                    src_layer_range=None, dst_layer_range=None, tensor_num_per_layer=2):
        """Blocks src_blocks of the remote blocks cache (a BlocksCacheKey; with blocks_caches
        False, any key naming a cache) into dst_blocks of dst_entry; with no src_blocks the
        remote batch entry the key names is cut into dst_blocks."""
        fields = _key_fields(src_key)
        src_blocks, dst_blocks = _check_blocks("src_blocks", src_blocks), _check_blocks("dst_blocks", dst_blocks)
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        by_blocks = bool(src_blocks)
        if not dst_blocks or (self._blocks_caches and (not dst_entry.is_blocks_cache
                                                       or by_blocks != (fields["kind"] == "blocks"))):
            return LLMStatusCode.LLM_PARAM_INVALID
        local = _plan.Layout.of_entry(dst_entry)

        def plan(remote, remote_batch_index):
            if self._blocks_caches:
                _require_kind(remote, by_blocks, "source")
            pairs = _plan.tensor_pairs(remote, local, src_layer_range, dst_layer_range, tensor_num_per_layer)
            if by_blocks:
                return _plan.blocks_segments(remote, local, src_blocks, dst_blocks, pairs)
            return _plan.entry_to_blocks_segments(remote, local, remote_batch_index, dst_blocks, pairs)
        return self._transfer(remote_cluster_id, fields, dst_entry, plan, write=False, release_key=False)

    def push_cache(self, remote_cluster_id, dst_key, src_entry, src_batch_index=0, size=-1, src_layer_range=None,
                   dst_layer_range=None, tensor_num_per_layer=2):
        """Entry src_batch_index of src_entry into the remote_accessible cache dst_key names (a
        CacheKeyByIdAndIndex); size must be -1, as in CANN."""
        fields = _key_fields(dst_key)
        _check_int("src_batch_index", src_batch_index, 0, wire.UINT32_MAX)
        _check_int("size", size, -1, wire.INT64_MAX)
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        if fields["kind"] != "id" or size != -1 or (self._blocks_caches and src_entry.is_blocks_cache):
            return LLMStatusCode.LLM_PARAM_INVALID
        local = _plan.Layout.of_entry(src_entry)

        def plan(remote, remote_batch_index):
            if self._blocks_caches:
                _require_kind(remote, False, "destination")
            pairs = _plan.tensor_pairs(local, remote, src_layer_range, dst_layer_range, tensor_num_per_layer)
            return _plan.cache_segments(local, remote, src_batch_index, remote_batch_index, size, pairs)
        return self._transfer(remote_cluster_id, fields, src_entry, plan, write=True, release_key=False)

    def push_blocks(self, remote_cluster_id, dst_key, src_entry, src_blocks=(), dst_blocks=(),
                    src_layer_range=None, dst_layer_range=None, tensor_num_per_layer=2):
        """Blocks src_blocks of src_entry into dst_blocks of the remote_accessible blocks cache
        dst_key (a BlocksCacheKey; with blocks_caches False, a key by id) names."""
        fields = _key_fields(dst_key)
        src_blocks, dst_blocks = _check_blocks("src_blocks", src_blocks), _check_blocks("dst_blocks", dst_blocks)
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        if not dst_blocks or (self._blocks_caches and (fields["kind"] != "blocks" or not src_entry.is_blocks_cache)):
            return LLMStatusCode.LLM_PARAM_INVALID
        local = _plan.Layout.of_entry(src_entry)

        def plan(remote, remote_batch_index):
            if self._blocks_caches:
                _require_kind(remote, True, "destination")
            pairs = _plan.tensor_pairs(local, remote, src_layer_range, dst_layer_range, tensor_num_per_layer)
            return _plan.blocks_segments(local, remote, src_blocks, dst_blocks, pairs)
        return self._transfer(remote_cluster_id, fields, src_entry, plan, write=True, release_key=False)

    def _pin_local(self, entry, hold):
        try:
            hold.enter_context(self._registry.pin(entry.cache_id))
        except LLMException as error:
            return _status(error.status_code)
        except (LookupError, ValueError):   # the registry's answer for a cache it does not hold
            return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        return SUCCESS

    def _transfer(self, remote_cluster_id, key_fields, local_entry, plan, write, release_key):
        """RESOLVE (the peer pins its cache and describes it), plan, one batch read or write,
        UNPIN (and release the key). Everything is checked before a byte moves."""
        with self._lock:
            made, accepted = self._links.get(remote_cluster_id), self._accepted.get(remote_cluster_id)
            link = made if made is not None and not made.broken else accepted or made
        if link is None:
            return LLMStatusCode.LLM_NOT_YET_LINK
        with link.transfer_lock, contextlib.ExitStack() as hold:
            with self._lock:
                engine = self._engine
            if engine is None:   # the agent closed since the link was looked up
                return LLMStatusCode.LLM_LINK_FAILED
            status = self._pin_local(local_entry, hold)
            if status != SUCCESS:
                return status
            try:
                reply = link.request(wire.MessageType.RESOLVE, {"key": key_fields, "write": write},
                                     self._sync_timeout_s)
            except LinkFailure as failure:
                return failure.status
            if reply["status"] != SUCCESS or reply["layout"] is None:
                return _status(reply["status"])
            status = self._move(link, engine, reply["layout"], local_entry, plan, write)
            try:
                unpinned = link.request(wire.MessageType.UNPIN,
                                        {"pin": reply["pin"], "release_key": release_key and status == SUCCESS},
                                        self._sync_timeout_s)
            except LinkFailure as failure:
                # The peer drops the pin with the connection; only a key to release is lost.
                return failure.status if status == SUCCESS and release_key else status
            if status == SUCCESS and unpinned["status"] != SUCCESS:
                return _status(unpinned["status"])
            return status

    def _move(self, link, engine, layout_fields, local_entry, plan, write):
        remote = _plan.Layout(tuple(layout_fields["tensor_addrs"]), layout_fields["tensor_bytes"],
                              layout_fields["batch"], layout_fields["block_bytes"], layout_fields["is_blocks_cache"],
                              tuple(tuple(region) for region in layout_fields["regions"]))
        try:
            segments = plan(remote, layout_fields["batch_index"])
        except _plan.PlanError as error:
            log.warning("transfer with cluster %d refused: %s", link.remote_cluster_id, error)
            return LLMStatusCode.LLM_PARAM_INVALID
        local_regions = tuple(tuple(region) for region in local_entry.regions)
        if write:
            segments = _plan.coalesce(segments, local_regions, remote.regions)
        else:
            segments = _plan.coalesce(segments, remote.regions, local_regions)
        if not engine.register(local_entry.regions):
            return LLMStatusCode.LLM_FAILED
        # The caller holds link.transfer_lock: one transfer at a time per link, so that the batches
        # of two never overflow Mooncake's per-peer queue together (_mooncake.TCP_QUEUE_VARIABLE).
        if write:
            result = engine.write(link.peer_engine, segments.src_addrs, segments.dst_addrs, segments.lengths)
        else:
            result = engine.read(link.peer_engine, segments.dst_addrs, segments.src_addrs, segments.lengths)
        if result != 0:
            log.warning("Mooncake %s of %d bytes with cluster %d at %s answered %d", "write" if write else "read",
                        segments.nbytes, link.remote_cluster_id, link.peer_engine, result)
            return LLMStatusCode.LLM_LINK_FAILED
        return SUCCESS
