"""Rank-table links (transfer/_rank_links.py): comms between two agents of this process, on
127.0.0.1 and 127.0.0.2 at a free port; which side listens, the statuses a comm goes through, a
link two comms share, and the ends of a preparation (its deadline, unlink, close) leaving no
thread, listener or link behind."""
import errno
import json
import socket
import threading
import time
import types

import pytest
from support.network import free_port, listening, mooncake_missing
from support.registries import LocalRegistry

import llmdd
from llmdd.transfer import TransferAgent, _rank_links
from llmdd.transfer._rank_links import FAILED, MAX_COMMS, OK, PREPARING, RankTableLinks

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER = 10, 20
RANKS = {PROMPT: 0, DECODER: 1}
LINK_SECONDS = 30   # two Mooncake engines and a data-plane helper starting on a busy 2-core machine
# What "at once" means here: an end that came of itself, not of a deadline of LINK_SECONDS, on a
# machine however busy (it takes milliseconds).
PROMPTLY = 10


def rank_table(*ips, version="1.2"):
    return json.dumps({"version": version, "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "host", "device": [{"device_id": "0", "device_ip": ip, "rank_id": str(rank)}
                                         for rank, ip in enumerate(ips)]}]})


TABLE = rank_table("127.0.0.1", "127.0.0.2")


@pytest.fixture
def sides():
    """sides(link_total_s) -> (prompt's RankTableLinks, decoder's), the prompt rank 0 on 127.0.0.1
    and the decoder rank 1 on 127.0.0.2, their rank table port free; closed as Finalize does."""
    made = []

    def make(link_total_s=LINK_SECONDS, port=None):
        port = port or free_port()
        for cluster_id in (PROMPT, DECODER):
            agent = TransferAgent(LocalRegistry(), cluster_id, sync_timeout_ms=5000)
            made.append((RankTableLinks(agent, link_total_s, port), agent))
        return made[-2][0], made[-1][0], port

    yield make
    for links, agent in made:
        links.close()
        agent.close()


def status_of(links, comm_id, seconds=LINK_SECONDS + 5):
    """The comm's status once it is no longer PREPARING (bounded)."""
    deadline = time.monotonic() + seconds
    while links.status(comm_id)[1] == PREPARING and time.monotonic() < deadline:
        time.sleep(0.05)
    return links.status(comm_id)


def comm_threads():
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("llmdd-comm-")]


def test_both_sides_link_with_one_table_the_lower_rank_listening(sides):
    prompt, decoder, port = sides()
    assert decoder.link("pd", RANKS, TABLE) == (S.LLM_SUCCESS, 1)   # the decoder first: it retries meanwhile
    assert decoder.status(1) == (S.LLM_SUCCESS, PREPARING)
    assert prompt.link("pd", RANKS, TABLE) == (S.LLM_SUCCESS, 1)
    assert listening(port, "127.0.0.1") and not listening(port, "127.0.0.2")
    assert status_of(prompt, 1) == status_of(decoder, 1) == (S.LLM_SUCCESS, OK)
    assert prompt._agent.linked_clusters() == [DECODER] and decoder._agent.linked_clusters() == [PROMPT]
    assert prompt.link("pd", RANKS, TABLE) == (S.LLM_ALREADY_LINK, None)
    assert prompt.link("pd again", RANKS, TABLE) == (S.LLM_SUCCESS, 2)   # ids count on per agent
    assert status_of(prompt, 2) == (S.LLM_SUCCESS, OK)


def test_a_link_two_comms_name_stays_until_neither_does(sides):
    prompt, decoder, port = sides()
    for name in ("first", "second"):
        decoder.link(name, RANKS, TABLE)
        prompt.link(name, RANKS, TABLE)
    assert [status_of(links, comm_id)[1] for links in (prompt, decoder) for comm_id in (1, 2)] == [OK] * 4
    assert prompt.unlink(1) == S.LLM_SUCCESS and decoder.unlink(1) == S.LLM_SUCCESS
    assert prompt._agent.linked_clusters() == [DECODER] and listening(port, "127.0.0.1")
    assert decoder.unlink(2) == S.LLM_SUCCESS   # ends the decoder's side; the prompt's ends with the connection
    assert prompt.unlink(2) == S.LLM_SUCCESS
    deadline = time.monotonic() + 5
    while (prompt._agent.linked_clusters() or decoder._agent.linked_clusters()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert prompt._agent.linked_clusters() == decoder._agent.linked_clusters() == []
    assert not listening(port, "127.0.0.1") and comm_threads() == []


def test_a_peer_that_never_links_fails_the_comm_at_its_deadline(sides):
    prompt, decoder, _ = sides(link_total_s=1)
    started = time.monotonic()
    assert decoder.link("pd", RANKS, TABLE) == (S.LLM_SUCCESS, 1)
    assert status_of(decoder, 1, seconds=10) == (S.LLM_SUCCESS, FAILED)
    assert 1 <= time.monotonic() - started < PROMPTLY
    assert prompt.link("alone", RANKS, TABLE) == (S.LLM_SUCCESS, 1)   # the listening side fails alike
    assert status_of(prompt, 1, seconds=10) == (S.LLM_SUCCESS, FAILED)
    assert decoder.unlink(1) == prompt.unlink(1) == S.LLM_SUCCESS


def test_unlink_ends_a_preparation_at_once_and_leaves_nothing_behind(sides):
    prompt, decoder, port = sides()
    assert decoder.link("pd", RANKS, TABLE)[1] == 1
    assert prompt.link("other", {PROMPT: 0, DECODER + 1: 1}, TABLE)[1] == 1   # listens, waits for 21
    time.sleep(0.3)   # both well into their retries and waits
    for links in (decoder, prompt):
        started = time.monotonic()
        assert links.unlink(1) == S.LLM_SUCCESS
        assert time.monotonic() - started < PROMPTLY
    assert comm_threads() == [] and not listening(port, "127.0.0.1")
    assert decoder.status(1)[0] == decoder.unlink(1) == S.LLM_NOT_YET_LINK


def test_close_ends_every_preparation(sides):
    prompt, decoder, _ = sides()
    for index in range(3):
        decoder.link(f"pd{index}", RANKS, TABLE)
    started = time.monotonic()
    decoder.close()
    assert time.monotonic() - started < PROMPTLY and comm_threads() == []
    assert decoder.link("late", RANKS, TABLE) == (S.LLM_FAILED, None)


def test_unknown_comms_are_not_yet_linked(sides):
    prompt, _, _ = sides()
    assert prompt.status(1) == (S.LLM_NOT_YET_LINK, None)
    assert prompt.unlink(7) == S.LLM_NOT_YET_LINK


def test_this_cluster_must_be_in_cluster_rank_info(sides):
    prompt, _, port = sides()
    assert prompt.link("pd", {DECODER: 0, DECODER + 1: 1}, TABLE) == (S.LLM_PARAM_INVALID, None)
    assert not listening(port, "127.0.0.1")


@pytest.mark.parametrize("table", ["{}", rank_table("127.0.0.1"), rank_table("127.0.0.1", "127.0.0.1"),
                                   rank_table("198.51.100.1", "127.0.0.2")])
def test_a_table_this_side_cannot_use_is_link_failed(sides, table):
    # Malformed, a rank missing, two ranks on one endpoint, an address this host lacks to listen on.
    prompt, _, port = sides()
    assert prompt.link("pd", RANKS, table) == (S.LLM_LINK_FAILED, None)
    assert prompt.link("pd", RANKS, TABLE) == (S.LLM_SUCCESS, 1)   # nothing of the failed one stays


def test_a_table_naming_this_side_at_0_0_0_0_opens_no_listener_on_every_interface(sides):
    prompt, _, port = sides()
    assert prompt.link("pd", RANKS, rank_table("0.0.0.0", "127.0.0.2")) == (S.LLM_LINK_FAILED, None)
    assert not listening(port, "127.0.0.1")


def test_two_clusters_on_one_rank_are_link_failed(sides):
    prompt, _, _ = sides()
    assert prompt.link("pd", {PROMPT: 0, DECODER: 0}, TABLE) == (S.LLM_LINK_FAILED, None)


def test_a_process_out_of_descriptors_fails_the_comm_at_its_deadline(sides, monkeypatch):
    # Every attempt's socket refused (EMFILE): the comm is tried again and FAILED at its deadline,
    # never left PREPARING by its thread's end.
    def no_descriptor(*args):
        raise OSError(errno.EMFILE, "Too many open files")

    _, decoder, _ = sides(link_total_s=1)
    monkeypatch.setattr(_rank_links, "socket", types.SimpleNamespace(
        socket=no_descriptor, AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM, SHUT_RDWR=socket.SHUT_RDWR))
    assert decoder.link("pd", RANKS, TABLE) == (S.LLM_SUCCESS, 1)
    assert status_of(decoder, 1, seconds=PROMPTLY) == (S.LLM_SUCCESS, FAILED)
    assert comm_threads() == []


def test_a_linking_side_whose_address_this_host_lacks_fails_at_once(sides):
    # 198.51.100.0/24 is TEST-NET-2 (RFC 5737): no host has it.
    _, decoder, _ = sides()
    started = time.monotonic()
    assert decoder.link("pd", RANKS, rank_table("127.0.0.1", "198.51.100.2")) == (S.LLM_SUCCESS, 1)
    assert status_of(decoder, 1) == (S.LLM_SUCCESS, FAILED)
    assert time.monotonic() - started < PROMPTLY   # not after LINK_SECONDS


def test_at_most_512_comms_at_a_time(sides):
    prompt, _, _ = sides(link_total_s=1)
    for comm_id in range(1, MAX_COMMS + 1):
        assert prompt.link(f"comm{comm_id}", RANKS, TABLE) == (S.LLM_SUCCESS, comm_id)
    assert prompt.link("one more", RANKS, TABLE) == (S.LLM_PARAM_INVALID, None)
    assert prompt.unlink(7) == S.LLM_SUCCESS
    assert prompt.link("one more", RANKS, TABLE) == (S.LLM_SUCCESS, MAX_COMMS + 1)
