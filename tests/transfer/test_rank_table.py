"""How llmdd reads a rank table (transfer/_rank_table.py): each rank's endpoint from the tables
vLLM-Ascend, MindIE and omni-infer write, and a clear refusal of a table it cannot use."""
import json

import pytest

from llmdd.transfer._rank_table import MAX_RANK_TABLE_CHARS, RankTableError, rank_endpoints

PORT = 24600


def device(rank, ip, device_id=None, **fields):
    entry = {"device_ip": ip, "rank_id": str(rank), **fields}
    if device_id is not None:
        entry["device_id"] = str(device_id)
    return entry


def table(*servers, version="1.2", **fields):
    return json.dumps({"version": version, "server_count": str(len(servers)), "status": "completed",
                       "server_list": [{"server_id": f"server{index}", "device": devices}
                                       for index, devices in enumerate(servers)], **fields})


def test_vllm_ascends_one_server_table_gives_each_device_its_port():
    # LLMDataDistCMgrConnector on one server: one server entry, two devices, super_device_id on A3.
    text = table([device(0, "10.0.0.5", 3, super_device_id="0"), device(1, "10.0.0.5", 7, super_device_id="1")],
                 super_pod_list=[{"super_pod_id": "0", "server_list": [{"server_id": "server0"}]}])
    assert rank_endpoints(text, [0, 1], PORT) == {0: ("10.0.0.5", PORT + 3), 1: ("10.0.0.5", PORT + 7)}


def test_a_v1_0_table_of_two_servers_with_host_ips():
    text = json.loads(table([device(0, "10.0.0.1", 0)], [device(1, "10.0.0.2", 0)], version="1.0"))
    for index, server in enumerate(text["server_list"]):
        server["host_ip"] = f"192.168.0.{index + 1}"
    assert rank_endpoints(json.dumps(text), [0, 1], PORT) == {0: ("10.0.0.1", PORT), 1: ("10.0.0.2", PORT)}


def test_a_device_port_wins_and_integers_are_taken_as_well_as_strings():
    text = table([{"device_ip": "127.0.0.1", "rank_id": 0, "device_id": 5, "device_port": "16666"},
                  {"device_ip": "127.0.0.1", "rank_id": 1, "device_port": 16667}])
    assert rank_endpoints(text, [0, 1], PORT) == {0: ("127.0.0.1", 16666), 1: ("127.0.0.1", 16667)}


def test_ranks_the_comm_does_not_name_need_no_address():
    text = table([device(0, "127.0.0.1"), device(1, "127.0.0.2"), {"rank_id": "2"}])
    assert rank_endpoints(text, [1], PORT) == {1: ("127.0.0.2", PORT)}


@pytest.mark.parametrize("text,message", [
    ("{not json", "not JSON"),
    ("[" * 100000 + "]" * 100000, "not JSON"),
    ("[]", "version"),
    (table([device(0, "127.0.0.1")], version="2.0"), "version"),
    (json.dumps({"version": "1.2"}), "server_list"),
    (json.dumps({"version": "1.2", "server_list": [{"device": []}]}), "server_id"),
    (json.dumps({"version": "1.2", "server_list": [{"server_id": "a", "device": {}}]}), "device list"),
    (table([device(0, "127.0.0.1"), {"device_ip": "127.0.0.2"}]), "no rank_id"),
    (table([device(0, "127.0.0.1"), device("-1", "127.0.0.2")]), "rank_id"),
    (table([device(0, "127.0.0.1"), device(True, "127.0.0.2")]), "rank_id"),
    (table([device(0, "127.0.0.1")], [device(0, "127.0.0.2")]), "twice"),
    (table([device(0, "127.0.0.1")]), "rank 1 of cluster_rank_info is not in the rank table"),
    (table([device(0, "127.0.0.1"), {"rank_id": "1"}]), "no IPv4 device_ip"),
    (table([device(0, "127.0.0.1"), device(1, "localhost")]), "no IPv4 device_ip"),
    (table([device(0, "0.0.0.0"), device(1, "127.0.0.2")]), "not the address of one host"),
    (table([device(0, "127.0.0.1"), device(1, "224.0.0.1")]), "not the address of one host"),
    (table([device(0, "127.0.0.1"), device(1, "255.255.255.255")]), "not the address of one host"),
    (table([device(0, "127.0.0.1"), device(1, "127.0.0.2", device_port="0")]), "device_port"),
    (table([device(0, "127.0.0.1"), device(1, "127.0.0.2", device_port="65536")]), "device_port"),
    (table([device(0, "127.0.0.1"), device(1, "127.0.0.2", 65535 - PORT + 1)]), "over 65535"),
    (table([device(0, "127.0.0.1", 1), device(1, "127.0.0.1", 1)]), "one endpoint"),
])
def test_a_table_llmdd_cannot_use_is_refused_with_the_reason(text, message):
    with pytest.raises(RankTableError, match=message):
        rank_endpoints(text, [0, 1], PORT)


def test_a_table_over_the_bound_is_refused_before_it_is_parsed():
    text = table([device(0, "127.0.0.1"), device(1, "127.0.0.2")])
    padded = text[:-1] + ', "padding": "' + " " * (MAX_RANK_TABLE_CHARS - len(text)) + '"}'
    with pytest.raises(RankTableError, match="characters long"):
        rank_endpoints(padded, [0, 1], PORT)
    assert rank_endpoints(text + " " * (MAX_RANK_TABLE_CHARS - len(text)), [0, 1], PORT)[1] == ("127.0.0.2", PORT)
