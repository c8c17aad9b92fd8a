"""Layer pushes into a held destination (the drop-in's transfer_cache_async): the destination is
resolved once for the transfer, each layer is a write and a KEEP, and the last layer's UNPIN ends
the pin. The destination stays pinned and exposed only while the transfer holds it, and is
released however the transfer ends: its last layer, release_destination, a link that ended or a
KEEP that was never answered."""
import time
import types

import pytest
from support.network import mooncake_missing, record_requests
from support.registries import LocalRegistry

import llmdd
from llmdd.llm_datadist import CacheKeyByIdAndIndex
from llmdd.transfer import TransferAgent
from llmdd.transfer import _protocol as wire

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER = 1, 2
LAYERS, TENSORS, ENTRY_BYTES = 4, 8, 64
WAIT_SECONDS = 10.0


def cluster(cluster_id, port):
    return types.SimpleNamespace(remote_cluster_id=cluster_id, remote_role_type=0,
                                 remote_ip_infos=[("127.0.0.1", port)], local_ip_infos=[])


@pytest.fixture
def linked(monkeypatch):
    """The decoder (which pushes) linked to the prompt (which holds the destination, remote
    accessible, one array a tensor), and the control requests the decoder sends (`sent`)."""
    sent = record_requests(monkeypatch)
    prompt_registry, decoder_registry = LocalRegistry(), LocalRegistry()
    with TransferAgent(prompt_registry, PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as prompt, \
            TransferAgent(decoder_registry, DECODER, sync_timeout_ms=500) as decoder:
        link = cluster(PROMPT, prompt.listen_address[1])
        assert decoder.link([link], 3000)[0] == S.LLM_SUCCESS
        destination = prompt_registry.allocate(TENSORS, 1, ENTRY_BYTES, remote_accessible=True, per_tensor=True)
        source = decoder_registry.allocate(TENSORS, 1, ENTRY_BYTES)
        for tensor in range(TENSORS):
            decoder_registry.tensor(source.cache_id, tensor)[:] = 10 + tensor
        sent.clear()
        yield types.SimpleNamespace(prompt=prompt, decoder=decoder, prompt_registry=prompt_registry, link=link,
                                    destination=destination, source=source, sent=sent)


def pins_held(agent):
    """The pins the agent's peers hold on it now, over every link."""
    return sum(len(channel._pins) for channel in [*agent._links.values(), *agent._accepted.values()])


def exposed(agent):
    return agent._mooncake._exposed


def layers_written(linked):
    """The layers whose two tensors the destination holds (the source's bytes), in order."""
    tensors = [(linked.prompt_registry.tensor(linked.destination.cache_id, t) == 10 + t).all() for t in range(TENSORS)]
    return [layer for layer in range(LAYERS) if tensors[2 * layer] and tensors[2 * layer + 1]]


def push(linked, held, layer, by_addresses, release=None):
    """Layer `layer` of the source into the same layer of the destination, into `held`."""
    release = layer == LAYERS - 1 if release is None else release
    if by_addresses:
        addrs = list(linked.destination.tensor_addrs[2 * layer:2 * layer + 2])
        return linked.decoder.push_layer_to_addresses(PROMPT, addrs, linked.source, layer, held=held, release=release)
    key = CacheKeyByIdAndIndex(PROMPT, linked.destination.cache_id, 0)
    return linked.decoder.push_layer(PROMPT, key, linked.source, layer, layer, held=held, release=release)


def hold(linked, by_addresses):
    return linked.decoder.hold_destination(list(linked.destination.tensor_addrs) if by_addresses else None)


def wait_until(condition):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.mark.parametrize("by_addresses", [False, True], ids=["by-key", "by-addresses"])
def test_a_transfer_resolves_its_destination_once_and_keeps_each_layer(linked, by_addresses):
    held = hold(linked, by_addresses)
    for layer in range(LAYERS):
        assert push(linked, held, layer, by_addresses) == S.LLM_SUCCESS
        # Each layer is in the destination once its push returns; the pin lasts until the last.
        assert layers_written(linked) == list(range(layer + 1))
        still_held = layer < LAYERS - 1
        assert pins_held(linked.prompt) == still_held and bool(exposed(linked.prompt)) == still_held
    M = wire.MessageType
    assert linked.sent == [M.RESOLVE] + [M.KEEP] * (LAYERS - 1) + [M.UNPIN]
    assert linked.prompt_registry.pin_count(linked.destination.cache_id) == 0


def test_raw_addresses_are_checked_whole_at_the_first_layer(linked):
    # The last layer's second address is memory the prompt never opened to pushes: the first layer
    # is refused, with nothing pinned or written.
    addrs = list(linked.destination.tensor_addrs)
    held = linked.decoder.hold_destination(addrs[:-1] + [0x1000])
    assert linked.decoder.push_layer_to_addresses(PROMPT, addrs[:2], linked.source, 0, held=held, release=False) == \
        S.LLM_PARAM_INVALID
    assert layers_written(linked) == [] and pins_held(linked.prompt) == 0 and held.link is None
    # Addresses that are not one layer of the held destination's (nor of one held by key) are
    # refused before anything is asked.
    linked.sent.clear()
    for held, dst_addrs in ((linked.decoder.hold_destination(addrs), addrs[1:3]),
                            (linked.decoder.hold_destination(), addrs[:2])):
        assert linked.decoder.push_layer_to_addresses(PROMPT, dst_addrs, linked.source, 0, held=held) == \
            S.LLM_PARAM_INVALID
    assert linked.sent == []


def test_release_destination_ends_the_pin_after_any_layer(linked):
    held = hold(linked, by_addresses=False)
    assert push(linked, held, 0, by_addresses=False) == S.LLM_SUCCESS
    assert pins_held(linked.prompt) == 1 and exposed(linked.prompt)
    linked.decoder.release_destination(held)
    assert pins_held(linked.prompt) == 0 and exposed(linked.prompt) == {}
    assert linked.prompt_registry.pin_count(linked.destination.cache_id) == 0
    assert layers_written(linked) == [0]   # what was kept stays
    linked.decoder.release_destination(held)   # nothing held: nothing asked
    assert linked.sent == [wire.MessageType.RESOLVE, wire.MessageType.KEEP, wire.MessageType.UNPIN]


def test_a_held_destination_goes_with_its_link_and_is_resolved_again_on_the_next(linked):
    held = hold(linked, by_addresses=False)
    assert push(linked, held, 0, by_addresses=False) == S.LLM_SUCCESS
    assert linked.decoder.unlink([linked.link], 3000)[0] == S.LLM_SUCCESS
    assert wait_until(lambda: pins_held(linked.prompt) == 0 and exposed(linked.prompt) == {})
    assert push(linked, held, 1, by_addresses=False) == S.LLM_NOT_YET_LINK
    assert held.link is None
    assert linked.decoder.link([linked.link], 3000)[0] == S.LLM_SUCCESS
    linked.sent.clear()
    for layer in range(1, LAYERS):
        assert push(linked, held, layer, by_addresses=False) == S.LLM_SUCCESS
    M = wire.MessageType
    assert linked.sent == [M.RESOLVE, M.KEEP, M.KEEP, M.UNPIN]
    assert layers_written(linked) == list(range(LAYERS)) and pins_held(linked.prompt) == 0


def test_a_keep_never_answered_ends_the_link_and_its_pin(linked, monkeypatch):
    keep = linked.prompt._server.keep

    def stalled(body, pins):
        time.sleep(1.5)   # past the decoder's sync wait (500 ms)
        return keep(body, pins)
    monkeypatch.setattr(linked.prompt._server, "keep", stalled)
    held = hold(linked, by_addresses=False)
    assert push(linked, held, 0, by_addresses=False) == S.LLM_TIMEOUT
    assert held.link is None
    assert wait_until(lambda: pins_held(linked.prompt) == 0 and exposed(linked.prompt) == {})
    assert wait_until(lambda: linked.prompt_registry.pin_count(linked.destination.cache_id) == 0)
    linked.decoder.release_destination(held)   # nothing left to release: no exception, nothing asked
    assert linked.sent == [wire.MessageType.RESOLVE, wire.MessageType.KEEP]
