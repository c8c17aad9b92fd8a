"""Rank tables as llmdd reads them: where each rank of a comm listens for its links.

A rank table is HCCL's JSON (versions 1.0 and 1.2, as vLLM-Ascend, MindIE and omni-infer write
them): servers, each with devices, each device a rank with its `rank_id`, `device_ip` and maybe a
`device_port` and a `device_id`. llmdd names a rank's transfer endpoint by them
(docs/transfer.md, "Rank-table links"): its `device_ip`, at its `device_port`, else at the rank
table port (llmdd.RankTablePort) plus its `device_id`, so that the devices of one host listen on
ports of their own. Fields llmdd has no use for (`server_count`, `status`, `super_device_id`,
`super_pod_list`, a server's `host_ip`) are let through.
"""
import ipaddress
import json

from .._limits import UINT32

# Tables name a few devices in under a kilobyte; a whole cluster's, a few thousand in well under
# this. Anything longer is refused before it is parsed.
MAX_RANK_TABLE_CHARS = 1 << 20
VERSIONS = ("1.0", "1.2")


class RankTableError(ValueError):
    """A rank table llmdd cannot use (CANN: one HCCL refuses, LLM_LINK_FAILED)."""


def rank_endpoints(rank_table, ranks, rank_table_port):
    """{rank: (device ip, port)} for each of `ranks` in `rank_table` (a JSON str);
    RankTableError for a table that is malformed, too long, or inconsistent: a rank it lacks,
    a rank id twice, two of `ranks` at one endpoint."""
    if len(rank_table) > MAX_RANK_TABLE_CHARS:
        raise RankTableError(f"the rank table is {len(rank_table)} characters long; at most "
                             f"{MAX_RANK_TABLE_CHARS} are read")
    try:
        table = json.loads(rank_table)
    except (ValueError, RecursionError):
        raise RankTableError("the rank table is not JSON") from None
    if not isinstance(table, dict) or table.get("version") not in VERSIONS:
        raise RankTableError(f"the rank table is not a JSON object of version {' or '.join(VERSIONS)}")
    devices = {}
    for server in _list_of(table, "server_list", "the rank table"):
        if not isinstance(server.get("server_id"), str):
            raise RankTableError("a server of the rank table has no server_id string")
        for device in _list_of(server, "device", f"server {server['server_id']!r}"):
            rank = _number(device, "rank_id", *UINT32)
            if rank is None:
                raise RankTableError(f"a device of server {server['server_id']!r} has no rank_id")
            if rank in devices:
                raise RankTableError(f"rank {rank} is in the rank table twice")
            devices[rank] = device
    endpoints = {}
    for rank in ranks:
        if rank not in devices:
            raise RankTableError(f"rank {rank} of cluster_rank_info is not in the rank table")
        endpoints[rank] = _endpoint(rank, devices[rank], rank_table_port)
    if len(set(endpoints.values())) < len(endpoints):
        raise RankTableError(f"two ranks of {sorted(endpoints)} name one endpoint: {endpoints}")
    return endpoints


def _list_of(record, field, what):
    """record[field]: a list of JSON objects."""
    items = record.get(field)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise RankTableError(f"{what} has no {field} list of objects")
    return items


def _number(device, field, low, high):
    """A device's field, a decimal string (HCCL's form) or a JSON integer in [low, high]; None
    when absent."""
    value = device.get(field)
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise RankTableError(f"{field} {device[field]!r} is not an integer in [{low}, {high}]")
    return value


def _endpoint(rank, device, rank_table_port):
    device_ip = device.get("device_ip")
    try:
        ip = ipaddress.IPv4Address(device_ip if isinstance(device_ip, str) else None)
    except ValueError:
        raise RankTableError(f"rank {rank} has no IPv4 device_ip: {device_ip!r}") from None
    # This side listens and links from its own endpoint's address: 0.0.0.0 would listen on every
    # interface, a multicast or reserved (broadcast) address is no one host's.
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        raise RankTableError(f"rank {rank}: device_ip {ip} is not the address of one host")
    port = _number(device, "device_port", 1, 65535)
    if port is None:
        port = rank_table_port + (_number(device, "device_id", *UINT32) or 0)
        if port > 65535:
            raise RankTableError(f"rank {rank}: port {port} (llmdd.RankTablePort {rank_table_port} plus its "
                                 "device_id) is over 65535")
    return str(ip), port
