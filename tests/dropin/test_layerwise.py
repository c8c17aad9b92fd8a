"""CacheManager.transfer_cache_async between two processes: the prompt (this process) pushes a
cache layer by layer as its LayerSynchronizer releases each layer, into a decoder (a drop-in peer
process) by raw addresses (TransferConfig) or by key (TransferWithCacheKeyConfig), whole caches
and blocks, every byte checked on the decoder; and remap_registered_memory.

A layer's bytes are written into the prompt's source only once the test has released that layer,
and the test checks that the decoder still holds none of them until then: a layer pushed before
its synchronize_layer returned True would carry stale bytes, or show up early.
"""
import queue
import threading
import time

import numpy
import pytest
from support.dropin import POOL, hostile, initialized, locked_probe, options
from support.network import free_port, mooncake_missing, record_requests
from support.patterns import pattern

from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    CacheKeyByIdAndIndex,
    CacheTask,
    DataType,
    LayerSynchronizer,
    LLMClusterInfo,
    LLMConfig,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
    MemInfo,
    Memtype,
    TransferConfig,
    TransferWithCacheKeyConfig,
)
from llmdd.transfer import _protocol as wire

pytestmark = [pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing())),
              pytest.mark.sim_only]   # numpy memory stands for device memory only on the sim build

S = LLMStatusCode
PROMPT_ID, DECODER_ID = 1, 2
LAYERS = 3
TENSORS = 2 * LAYERS                   # CANN's layer-wise transfer: a K and a V tensor a layer
BATCH, ENTRY_BYTES = 2, 224            # whole caches: 2 entries of 224 bytes
BLOCKS, BLOCK_BYTES = 6, 64            # blocks caches; an entry cut into them: 64, 64, 64 and 32 bytes
WAIT_MS = 30000


def desc(shape):
    return CacheDesc(TENSORS, list(shape), DataType.DT_UINT8)


# The decoder: a drop-in peer that registers a whole cache, a blocks cache and a cache no peer may
# write (remote_accessible=False), each tensor holding its own marker pattern, and listens.
DECODER = """
config = LLMConfig()
config.device_id = 0
config.enable_cache_manager = True
config.mem_pool_cfg = {pool!r}
config.enable_remote_cache_accessible = {keyed}
config.listen_ip_info = "127.0.0.1:{port}"
datadist = LLMDataDist(LLMRole.DECODER, {decoder})
datadist.init(config.generate_options())
manager = datadist.cache_manager
arrays = {{name: numpy.zeros(({tensors},) + shape, numpy.uint8) for name, shape in
          (("whole", ({batch}, {entry})), ("blocks", ({blocks}, {block})), ("private", ({batch}, {entry})))}}
for seed, array in enumerate(arrays.values()):
    for tensor in range({tensors}):
        array[tensor].reshape(-1)[:] = pattern(90 + seed, tensor, array[tensor].size)
def addrs(name):
    return [int(arrays[name][tensor].ctypes.data) for tensor in range({tensors})]
whole = manager.register_cache(CacheDesc({tensors}, [{batch}, {entry}], DataType.DT_UINT8), addrs("whole"))
blocks = manager.register_blocks_cache(CacheDesc({tensors}, [{blocks}, {block}], DataType.DT_UINT8), addrs("blocks"),
                                       BlocksCacheKey({decoder}, 0))
private = manager.register_cache(CacheDesc({tensors}, [{batch}, {entry}], DataType.DT_UINT8), addrs("private"),
                                 remote_accessible=False)
result = {{"whole": addrs("whole"), "blocks": addrs("blocks"), "private": addrs("private"),
          "whole_id": whole.cache_id, "private_id": private.cache_id}}
"""


def marker(name, tensor, shape):
    """What the decoder's tensor holds before anything is pushed into it."""
    seed = 90 + ("whole", "blocks", "private").index(name)
    return pattern(seed, tensor, int(numpy.prod(shape))).reshape(shape)


class Decoder:
    """The decoder peer: its caches' addresses and what its tensors hold now."""

    def __init__(self, peers, keyed):
        self.peer = peers()
        self.port = free_port()
        self.addrs = self.peer.run(DECODER.format(
            pool=POOL, keyed=keyed, port=self.port, decoder=DECODER_ID, tensors=TENSORS, batch=BATCH,
            entry=ENTRY_BYTES, blocks=BLOCKS, block=BLOCK_BYTES))

    def arrays(self, name):
        rows = self.peer.run(f"result = arrays[{name!r}].tobytes().hex()")
        shape = (BATCH, ENTRY_BYTES) if name != "blocks" else (BLOCKS, BLOCK_BYTES)
        return numpy.frombuffer(bytes.fromhex(rows), numpy.uint8).reshape((TENSORS,) + shape).copy()

    def held(self):
        return self.peer.run(HELD)

    def initial(self, name):
        shape = (BATCH, ENTRY_BYTES) if name != "blocks" else (BLOCKS, BLOCK_BYTES)
        return numpy.stack([marker(name, tensor, shape) for tensor in range(TENSORS)])


class Source:
    """The prompt's source cache over numpy memory: stale bytes until a layer is computed."""

    def __init__(self, manager, shape, blocks):
        self.array = numpy.stack([pattern(50, tensor, int(numpy.prod(shape))).reshape(shape)
                                  for tensor in range(TENSORS)])
        addrs = [int(self.array[tensor].ctypes.data) for tensor in range(TENSORS)]
        register = manager.register_blocks_cache if blocks else manager.register_cache
        self.cache = register(desc(shape), addrs)

    def computed(self, tensor):
        return pattern(60, tensor, self.array[tensor].size).reshape(self.array.shape[1:])

    def compute(self, layer):
        for tensor in (2 * layer, 2 * layer + 1):
            self.array[tensor] = self.computed(tensor)


class Stepper(LayerSynchronizer):
    """Each synchronize_layer says which layer it waits for, then waits for the test's go; the
    layer is computed (written into the source) only then. `answers` gives what each layer's
    call returns (True by default). `events` records ("synchronized", layer) as a call returns,
    and watch_pushes adds ("pushed", layer) as the agent is asked to push a layer."""

    def __init__(self, source=None, answers=None):
        self.asked = queue.Queue()
        self.go = [threading.Event() for _ in range(LAYERS)]
        self.events = []
        self._source = source
        self._answers = answers or {}

    def synchronize_layer(self, layer_index, timeout_in_millis):
        assert timeout_in_millis is None   # CANN passes no timeout (llm_utils.py transfer_layers)
        self.asked.put(layer_index)
        if not self.go[layer_index].wait(WAIT_MS / 1000):
            return False
        if self._source is not None:
            self._source.compute(layer_index)
        self.events.append(("synchronized", layer_index))
        return self._answers.get(layer_index, True)

    def next_layer(self):
        return self.asked.get(timeout=WAIT_MS / 1000)


def watch_pushes(prompt, stepper):
    """Records in stepper.events each layer push the prompt's transfer agent is asked for."""
    agent = prompt._transfer_agent("test")
    for name in ("push_layer", "push_layer_to_addresses"):
        def pushed(*args, _push=getattr(agent, name), **kwargs):
            stepper.events.append(("pushed", args[3]))   # src_layer: the fourth argument of both
            return _push(*args, **kwargs)
        setattr(agent, name, pushed)


@pytest.fixture
def prompt_of(ended_peers):
    """prompt_of(keyed) -> this process's prompt LLMDataDist (cache-manager mode)."""
    made = []

    def initialize(keyed):
        config = LLMConfig()
        config.device_id = 0
        config.enable_cache_manager = True
        config.mem_pool_cfg = POOL
        config.enable_remote_cache_accessible = keyed
        datadist = LLMDataDist(LLMRole.PROMPT, PROMPT_ID)
        datadist.init(config.generate_options())
        made.append(datadist)
        return datadist

    yield initialize
    for datadist in made:
        datadist.finalize()


def link(prompt, decoder):
    cluster = LLMClusterInfo()
    cluster.remote_cluster_id = DECODER_ID
    cluster.append_local_ip_info("127.0.0.1", 0)
    cluster.append_remote_ip_info("127.0.0.1", decoder.port)
    assert prompt.link_clusters([cluster], 5000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])


def layer_by_layer(task, stepper, decoder, name, expected):
    """Releases the layers one by one; before each release, the decoder holds nothing of that
    layer and every earlier layer whole, and no layer was pushed before its synchronize_layer
    returned. expected: the decoder's tensors once everything moved."""
    initial = decoder.initial(name)
    for layer in range(LAYERS):
        assert stepper.next_layer() == layer
        now = decoder.arrays(name)
        done = 2 * layer
        assert numpy.array_equal(now[:done], expected[:done]), f"layers before {layer} not pushed"
        assert numpy.array_equal(now[done:], initial[done:]), f"layer {layer} pushed before it was released"
        stepper.go[layer].set()
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    assert task.get_results() == [S.LLM_SUCCESS]
    assert stepper.events == [(event, layer) for layer in range(LAYERS) for event in ("synchronized", "pushed")]
    assert numpy.array_equal(decoder.arrays(name), expected)


def worker_threads():
    return [thread for thread in threading.enumerate() if thread.name == "llmdd-transfer-cache-async"]


def test_raw_addresses_take_each_layer_once_it_is_synchronized(prompt_of, peers):
    decoder = Decoder(peers, keyed=False)
    prompt = prompt_of(keyed=False)
    manager = prompt.cache_manager
    source = Source(manager, (BATCH, ENTRY_BYTES), blocks=False)
    link(prompt, decoder)
    # Source entry 1 into the decoder's entry 0 (a raw address names an entry: CANN adds no offset).
    stepper = Stepper(source)
    watch_pushes(prompt, stepper)
    task = manager.transfer_cache_async(source.cache, stepper, [TransferConfig(DECODER_ID, decoder.addrs["whole"],
                                                                               src_batch_index=1)])
    assert type(task) is CacheTask
    expected = decoder.initial("whole")
    for tensor in range(TENSORS):
        expected[tensor, 0] = source.computed(tensor)[1]
    layer_by_layer(task, stepper, decoder, "whole", expected)
    assert not worker_threads()   # the worker ends with its task

    # A config naming some layers: their addresses only, one per tensor of those layers.
    stepper = Stepper(source)
    config = TransferConfig(DECODER_ID, [addr + ENTRY_BYTES for addr in decoder.addrs["whole"][2:6]], range(1, 3))
    task = manager.transfer_cache_async(source.cache, stepper, [config])
    for layer in (1, 2):
        assert stepper.next_layer() == layer   # a layer no config names is not waited for
        stepper.go[layer].set()
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    expected[2:6, 1] = source.array[2:6, 0]
    assert numpy.array_equal(decoder.arrays("whole"), expected)


def test_raw_addresses_take_an_entry_cut_into_blocks_and_blocks_into_blocks(prompt_of, peers):
    decoder = Decoder(peers, keyed=False)
    prompt = prompt_of(keyed=False)
    manager = prompt.cache_manager
    whole = Source(manager, (BATCH, ENTRY_BYTES), blocks=False)
    blocks = Source(manager, (BLOCKS, BLOCK_BYTES), blocks=True)
    link(prompt, decoder)
    expected = decoder.initial("blocks")

    # Entry 0 cut into the decoder's blocks 5, 1, 2 and 3: 64, 64, 64, then 32 bytes, whose block
    # keeps its last 32 bytes (layer_wise_transfer_job.cc GenerateCacheToBlocksTask).
    stepper = Stepper(whole)
    watch_pushes(prompt, stepper)
    task = manager.transfer_cache_async(whole.cache, stepper, [TransferConfig(DECODER_ID, decoder.addrs["blocks"])],
                                        dst_block_indices=[5, 1, 2, 3], dst_block_memory_size=BLOCK_BYTES)
    for tensor in range(TENSORS):
        entry = whole.computed(tensor)[0]
        for piece, block in enumerate([5, 1, 2, 3]):
            cut = entry[piece * BLOCK_BYTES:(piece + 1) * BLOCK_BYTES]
            expected[tensor, block, :len(cut)] = cut
    layer_by_layer(task, stepper, decoder, "blocks", expected)

    # Blocks 0 and 1 into the decoder's blocks 4 and 0.
    stepper = Stepper(blocks)
    task = manager.transfer_cache_async(blocks.cache, stepper, [TransferConfig(DECODER_ID, decoder.addrs["blocks"])],
                                        src_block_indices=[0, 1], dst_block_indices=[4, 0])
    for layer in range(LAYERS):
        assert stepper.next_layer() == layer
        stepper.go[layer].set()
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    for tensor in range(TENSORS):
        expected[tensor, [4, 0]] = blocks.computed(tensor)[[0, 1]]
    assert numpy.array_equal(decoder.arrays("blocks"), expected)


def test_addresses_outside_remote_accessible_memory_are_refused_with_nothing_written(prompt_of, peers):
    decoder = Decoder(peers, keyed=False)
    prompt = prompt_of(keyed=False)
    manager = prompt.cache_manager
    source = Source(manager, (BATCH, ENTRY_BYTES), blocks=False)
    link(prompt, decoder)
    whole = decoder.addrs["whole"]
    forged = [
        [0x10000, 0x20000] * LAYERS,                                   # memory the decoder never registered
        [addr + ENTRY_BYTES + 1 for addr in whole],                    # an entry that runs past a tensor's end
        decoder.addrs["private"],                                      # a cache no peer may write
    ]
    for dst_addrs in forged:
        stepper = Stepper(source)
        for event in stepper.go:
            event.set()
        task = manager.transfer_cache_async(source.cache, stepper, [TransferConfig(DECODER_ID, dst_addrs)])
        assert task.synchronize(WAIT_MS) is S.LLM_PARAM_INVALID
        assert task.get_results() == [S.LLM_PARAM_INVALID]
    for name in ("whole", "private"):
        assert numpy.array_equal(decoder.arrays(name), decoder.initial(name))
    # Blocks past the end of a tensor are refused too, though the first ones fit.
    stepper = Stepper(source)
    for event in stepper.go:
        event.set()
    task = manager.transfer_cache_async(source.cache, stepper, [TransferConfig(DECODER_ID, decoder.addrs["blocks"])],
                                        dst_block_indices=[0, BLOCKS], dst_block_memory_size=BLOCK_BYTES)
    assert task.synchronize(WAIT_MS) is S.LLM_PARAM_INVALID
    assert numpy.array_equal(decoder.arrays("blocks"), decoder.initial("blocks"))


def test_keyed_configs_push_into_remote_caches_by_key(prompt_of, peers):
    decoder = Decoder(peers, keyed=True)
    prompt = prompt_of(keyed=True)
    manager = prompt.cache_manager
    whole = Source(manager, (BATCH, ENTRY_BYTES), blocks=False)
    blocks = Source(manager, (BLOCKS, BLOCK_BYTES), blocks=True)
    link(prompt, decoder)

    # transfer_cache_async_sample.py:123-128: a BlocksCacheKey and no block indices: block 0 of
    # each tensor of the named layers into block 0 of the decoder's.
    stepper = Stepper(blocks)
    watch_pushes(prompt, stepper)
    config = TransferWithCacheKeyConfig(BlocksCacheKey(DECODER_ID, 0), range(0, LAYERS), range(0, LAYERS))
    task = manager.transfer_cache_async(blocks.cache, stepper, [config])
    expected = decoder.initial("blocks")
    for tensor in range(TENSORS):
        expected[tensor, 0] = blocks.computed(tensor)[0]
    layer_by_layer(task, stepper, decoder, "blocks", expected)

    # Blocks into blocks, and an entry cut into blocks, by BlocksCacheKey.
    stepper = Stepper(blocks)
    for event in stepper.go:
        event.set()
    task = manager.transfer_cache_async(blocks.cache, stepper, [config], src_block_indices=[2, 3],
                                        dst_block_indices=[3, 4])
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    stepper = Stepper(whole)
    for event in stepper.go:
        event.set()
    task = manager.transfer_cache_async(whole.cache, stepper, [config], dst_block_indices=[1, 2, 5, 0],
                                        dst_block_memory_size=BLOCK_BYTES)
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    for tensor in range(TENSORS):
        expected[tensor, [3, 4]] = blocks.computed(tensor)[[2, 3]]
        entry = whole.computed(tensor)[0]
        for piece, block in enumerate([1, 2, 5, 0]):
            cut = entry[piece * BLOCK_BYTES:(piece + 1) * BLOCK_BYTES]
            expected[tensor, block, :len(cut)] = cut
    assert numpy.array_equal(decoder.arrays("blocks"), expected)

    # By id and batch index: source layers 1 and 2, entry 1, into layers 0 and 1 of entry 1.
    stepper = Stepper(whole)
    for event in stepper.go:
        event.set()
    key = CacheKeyByIdAndIndex(DECODER_ID, decoder.addrs["whole_id"], 1)
    task = manager.transfer_cache_async(whole.cache, stepper,
                                        [TransferWithCacheKeyConfig(key, range(1, 3), range(0, 2), 1)])
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    expected = decoder.initial("whole")
    expected[0:4, 1] = whole.array[2:6, 1]
    assert numpy.array_equal(decoder.arrays("whole"), expected)

    # Keys that name no remote cache, and one that names a cache no peer may write.
    for cache_key, status in ((BlocksCacheKey(DECODER_ID, 9), S.LLM_KV_CACHE_NOT_EXIST),
                              (CacheKeyByIdAndIndex(DECODER_ID, 99, 0), S.LLM_KV_CACHE_NOT_EXIST),
                              (CacheKeyByIdAndIndex(DECODER_ID, decoder.addrs["private_id"], 0), S.LLM_PARAM_INVALID)):
        stepper = Stepper(whole)
        for event in stepper.go:
            event.set()
        task = manager.transfer_cache_async(whole.cache, stepper, [TransferWithCacheKeyConfig(
            cache_key, range(0, 1), range(0, 1))])
        assert task.synchronize(WAIT_MS) is status
    assert numpy.array_equal(decoder.arrays("private"), decoder.initial("private"))


def test_a_layer_not_synchronized_ends_the_task_with_canns_status(prompt_of, peers):
    decoder = Decoder(peers, keyed=False)
    prompt = prompt_of(keyed=False)
    manager = prompt.cache_manager
    source = Source(manager, (BATCH, ENTRY_BYTES), blocks=False)
    link(prompt, decoder)
    first = TransferConfig(DECODER_ID, decoder.addrs["whole"][:2], range(0, 1))
    rest = TransferConfig(DECODER_ID, decoder.addrs["whole"][2:], range(1, LAYERS))
    stepper = Stepper(source, answers={1: False})
    task = manager.transfer_cache_async(source.cache, stepper, [first, rest])
    assert stepper.next_layer() == 0
    stepper.go[0].set()
    assert stepper.next_layer() == 1
    # While a layer waits, the task is not over: CANN's CacheTask answers LLM_TIMEOUT.
    assert task.synchronize(100) is S.LLM_TIMEOUT
    assert task.get_results(100) == [S.LLM_TIMEOUT, S.LLM_TIMEOUT]
    stepper.go[1].set()
    # llm_utils.py transfer_layers: a layer that fails to synchronize is LLM_PARAM_INVALID for the
    # configs that name it, and the task ends there.
    assert task.synchronize(WAIT_MS) is S.LLM_PARAM_INVALID
    assert task.get_results() == [S.LLM_SUCCESS, S.LLM_PARAM_INVALID]
    assert stepper.asked.empty()   # layer 2 never waited for
    expected = decoder.initial("whole")
    expected[0:2, 0] = source.computed(0)[0], source.computed(1)[0]
    assert numpy.array_equal(decoder.arrays("whole"), expected)


def test_remap_registered_memory_takes_memory_inside_caches_once_linked(prompt_of, peers):
    decoder = Decoder(peers, keyed=False)
    prompt = prompt_of(keyed=False)
    manager = prompt.cache_manager
    source = Source(manager, (BATCH, ENTRY_BYTES), blocks=False)
    pooled = manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
    inside = [MemInfo(Memtype.MEM_TYPE_DEVICE, addr + 16, ENTRY_BYTES) for addr in source.cache.tensor_addrs]
    # comm_entity_manager.cc RemapRegisteredMemory: no link yet is LLM_NOT_YET_LINK.
    with pytest.raises(LLMException) as raised:
        manager.remap_registered_memory(inside)
    assert raised.value.status_code is S.LLM_NOT_YET_LINK
    link(prompt, decoder)
    assert manager.remap_registered_memory(inside) is None
    assert manager.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_DEVICE, pooled.tensor_addrs[1], 8)) is None
    tensor_bytes = BATCH * ENTRY_BYTES
    for outside in (MemInfo(Memtype.MEM_TYPE_DEVICE, 0x10000, 8),
                    MemInfo(Memtype.MEM_TYPE_DEVICE, source.cache.tensor_addrs[0] + 1, tensor_bytes)):
        with pytest.raises(LLMException) as raised:
            manager.remap_registered_memory([*inside, outside])
        assert raised.value.status_code is S.LLM_FAILED
    with pytest.raises(LLMException) as raised:
        manager.remap_registered_memory([])
    assert raised.value.status_code is S.LLM_PARAM_INVALID
    manager.deallocate_cache(pooled)


# Each config's destination is resolved once and held while the task runs, and no longer.

# What a side's transfer agent holds for its peers' pushes now: [pins, regions exposed].
HELD = """
agent = datadist._transfer_agent("test")
channels = [*agent._links.values(), *agent._accepted.values()]
result = [sum(len(channel._pins) for channel in channels), len(agent._mooncake._exposed) if agent._mooncake else 0]
"""


def held_by(datadist):
    namespace = {"datadist": datadist}
    exec(HELD, namespace)
    return namespace["result"]


def held_until(read, done):
    """read()'s first answer that is done(), or its last one after WAIT_MS."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not done(answer := read()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer


def nothing_held(held):
    return held == [0, 0]


def first_layer_pushed(decoder, prompt_of, keyed=False, answers=None):
    """A task of a whole cache into the decoder's, stopped in synchronize_layer(1) once layer 0
    moved: (prompt, task, stepper, source)."""
    prompt = prompt_of(keyed=keyed)
    source = Source(prompt.cache_manager, (BATCH, ENTRY_BYTES), blocks=False)
    link(prompt, decoder)
    if keyed:
        key = CacheKeyByIdAndIndex(DECODER_ID, decoder.addrs["whole_id"], 0)
        config = TransferWithCacheKeyConfig(key, range(LAYERS), range(LAYERS))
    else:
        config = TransferConfig(DECODER_ID, decoder.addrs["whole"])
    stepper = Stepper(source, answers)
    task = prompt.cache_manager.transfer_cache_async(source.cache, stepper, [config])
    assert stepper.next_layer() == 0
    assert decoder.held() == [0, 0]   # nothing is resolved before a layer is released
    stepper.go[0].set()
    assert stepper.next_layer() == 1
    return prompt, task, stepper, source


@pytest.mark.parametrize("keyed", [False, True], ids=["by-address", "by-key"])
def test_a_task_resolves_its_destination_once_and_holds_it_only_while_it_runs(prompt_of, peers, monkeypatch, keyed):
    decoder = Decoder(peers, keyed=keyed)
    sent = record_requests(monkeypatch)
    _, task, stepper, source = first_layer_pushed(decoder, prompt_of, keyed)
    pins, regions = decoder.held()
    assert pins == 1 and regions > 0
    # A task that outlasts the caller's wait still runs, and holds its destination.
    assert task.synchronize(100) is S.LLM_TIMEOUT
    assert decoder.held() == [pins, regions]
    for layer in (1, 2):
        stepper.go[layer].set()
    assert task.synchronize(WAIT_MS) is S.LLM_SUCCESS
    assert decoder.held() == [0, 0]
    M = wire.MessageType
    assert sent[sent.index(M.RESOLVE):] == [M.RESOLVE, M.KEEP, M.KEEP, M.UNPIN]
    expected = decoder.initial("whole")
    for tensor in range(TENSORS):
        expected[tensor, 0] = source.computed(tensor)[0]
    assert numpy.array_equal(decoder.arrays("whole"), expected)


@pytest.mark.parametrize("ending", ["not-synchronized", "finalize", "decoder-killed"])
def test_the_destination_is_released_however_the_task_ends(prompt_of, peers, ending):
    decoder = Decoder(peers, keyed=False)
    answers = {1: False} if ending == "not-synchronized" else None
    prompt, task, stepper, _ = first_layer_pushed(decoder, prompt_of, answers=answers)
    assert decoder.held()[0] == 1
    if ending == "not-synchronized":
        stepper.go[1].set()
        assert task.synchronize(WAIT_MS) is S.LLM_PARAM_INVALID
        assert decoder.held() == [0, 0]
    elif ending == "finalize":
        prompt.finalize()   # the worker waits in synchronize_layer(1): its link ends under it
        assert nothing_held(held_until(decoder.held, nothing_held))
        stepper.go[1].set()
        assert task.synchronize(WAIT_MS) is S.LLM_FAILED
    else:
        decoder.peer.kill()
        decoder.peer.process.returncode = 0   # killed on purpose
        stepper.go[1].set()
        assert task.synchronize(WAIT_MS) in (S.LLM_LINK_FAILED, S.LLM_TIMEOUT)
    assert not worker_threads()


# The pusher: a drop-in peer whose task stops in synchronize_layer(1), never released.
PUSHER = """
config = LLMConfig()
config.device_id = 0
config.enable_cache_manager = True
config.mem_pool_cfg = {pool!r}
datadist = LLMDataDist(LLMRole.PROMPT, {prompt})
datadist.init(config.generate_options())
source = numpy.full(({tensors}, {batch}, {entry}), 7, numpy.uint8)
cache = datadist.cache_manager.register_cache(CacheDesc({tensors}, [{batch}, {entry}], DataType.DT_UINT8),
                                              [int(source[tensor].ctypes.data) for tensor in range({tensors})])
cluster = LLMClusterInfo()
cluster.remote_cluster_id = {decoder}
cluster.append_local_ip_info("127.0.0.1", 0)
cluster.append_remote_ip_info("127.0.0.1", {port})
assert datadist.link_clusters([cluster], 5000)[0] == LLMStatusCode.LLM_SUCCESS
import threading
never = threading.Event()
class FirstLayerOnly(LayerSynchronizer):
    def synchronize_layer(self, layer_index, timeout_in_millis):
        return layer_index == 0 or never.wait()
task = datadist.cache_manager.transfer_cache_async(cache, FirstLayerOnly(), [TransferConfig({decoder}, {addrs!r})])
result = None
"""


def test_a_pusher_that_dies_mid_task_leaves_nothing_held(peers):
    port = free_port()
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.mem_pool_cfg = POOL
    config.listen_ip_info = f"127.0.0.1:{port}"
    decoder = LLMDataDist(LLMRole.DECODER, DECODER_ID)
    decoder.init(config.generate_options())
    try:
        arrays = numpy.zeros((TENSORS, BATCH, ENTRY_BYTES), numpy.uint8)
        decoder.cache_manager.register_cache(desc((BATCH, ENTRY_BYTES)), [int(array.ctypes.data) for array in arrays])
        pusher = peers()
        pusher.run(PUSHER.format(pool=POOL, prompt=PROMPT_ID, decoder=DECODER_ID, port=port, tensors=TENSORS,
                                 batch=BATCH, entry=ENTRY_BYTES, addrs=[int(array.ctypes.data) for array in arrays]))
        pins, regions = held_until(lambda: held_by(decoder), lambda held: held[0] == 1)
        assert pins == 1 and regions > 0 and (arrays[:2, 0] == 7).all() and (arrays[2:] == 0).all()
        pusher.kill()
        pusher.process.returncode = 0   # killed on purpose
        assert nothing_held(held_until(lambda: held_by(decoder), nothing_held))
    finally:
        decoder.finalize()


# One process: what happens before any byte could move.

def released(answers=None):
    stepper = Stepper(answers=answers)
    for event in stepper.go:
        event.set()
    return stepper


class Raising(LayerSynchronizer):
    def synchronize_layer(self, layer_index, timeout_in_millis):
        raise RuntimeError("the model failed")


def test_each_layer_waits_for_its_synchronizer_before_the_link_is_asked(datadist_v2):
    manager = datadist_v2.cache_manager
    cache = manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
    config = TransferConfig(DECODER_ID, [0x1000] * TENSORS)
    for synchronizer, status in ((released({0: False}), S.LLM_PARAM_INVALID), (Raising(), S.LLM_PARAM_INVALID),
                                 (released(), S.LLM_NOT_YET_LINK)):
        task = manager.transfer_cache_async(cache, synchronizer, [config])
        assert task.synchronize(WAIT_MS) is status
        assert task.get_results(WAIT_MS) == [status]
    assert not worker_threads()
    manager.deallocate_cache(cache)


def test_a_keys_cluster_id_calling_back_never_finds_the_transfer_agent_locked():
    # The worker looks the key's cluster up among the agent's links under the agent's lock: an int
    # subclass's __hash__ calling back into the agent there would hang the worker, and Finalize
    # waiting for it.
    datadist = initialized(enable_cache_manager=True, enable_remote_cache_accessible=True, mem_pool_cfg=POOL)
    manager = datadist.cache_manager
    cache = manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
    found_locked = []
    probe = locked_probe(lambda: manager.remap_registered_memory(
        MemInfo(Memtype.MEM_TYPE_DEVICE, cache.tensor_addrs[0], 8)), found_locked)
    key = CacheKeyByIdAndIndex(hostile(int, probe)(DECODER_ID), 1, 0)
    try:
        task = manager.transfer_cache_async(cache, released(), [TransferWithCacheKeyConfig(key, range(0, 1),
                                                                                            range(0, 1))])
        assert task.synchronize(WAIT_MS) is S.LLM_NOT_YET_LINK
    finally:
        datadist.finalize()
    assert not any(found_locked)


def test_canns_checks_before_the_task_starts(datadist_v2):
    manager = datadist_v2.cache_manager
    cache = manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
    odd = manager.allocate_cache(CacheDesc(3, [BATCH, ENTRY_BYTES], DataType.DT_UINT8))
    blocks = manager.allocate_blocks_cache(desc((BLOCKS, BLOCK_BYTES)))
    # llm_utils.py TransferCacheJob.init and check_transfer_config.
    for call in (lambda: manager.transfer_cache_async(odd, released(), [TransferConfig(DECODER_ID, [1] * 2)]),
                 lambda: manager.transfer_cache_async(cache, released(), [TransferConfig(DECODER_ID, [1] * 4)]),
                 lambda: manager.transfer_cache_async(cache, released(), [TransferConfig(DECODER_ID, [1] * 2,
                                                                                         range(3, 4))]),
                 lambda: manager.transfer_cache_async(blocks, released(), [TransferConfig(DECODER_ID, [1] * 6, None, 1)],
                                                      [0], [0])):
        with pytest.raises(LLMException) as raised:
            call()
        assert raised.value.status_code is S.LLM_PARAM_INVALID
    # A config without layers takes every layer, set on it as CANN does.
    config = TransferConfig(DECODER_ID, [1] * TENSORS)
    manager.transfer_cache_async(cache, released(), [config]).synchronize(WAIT_MS)
    assert config.src_layer_range == range(0, LAYERS)
    with pytest.raises(TypeError):   # without enable_remote_cache_accessible configs are TransferConfigs
        manager.transfer_cache_async(cache, released(), [TransferWithCacheKeyConfig(
            BlocksCacheKey(DECODER_ID), range(0, 1), range(0, 1))])
    for each in (cache, odd):
        manager.deallocate_cache(each)
    manager.deallocate_blocks_cache(blocks)


def test_finalize_ends_a_task_and_its_worker():
    datadist = initialized(enable_cache_manager=True, mem_pool_cfg=POOL)
    manager = datadist.cache_manager
    cache = manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
    stepper = Stepper()
    task = manager.transfer_cache_async(cache, stepper, [TransferConfig(DECODER_ID, [0x1000] * TENSORS)])
    assert stepper.next_layer() == 0
    datadist.finalize()   # returns while the worker waits in the caller's synchronize_layer
    stepper.go[0].set()   # which then ends the task, moving nothing
    assert task.synchronize(WAIT_MS) is S.LLM_FAILED
    assert task.get_results() == [S.LLM_FAILED]
    assert stepper.asked.empty() and not worker_threads()


def test_v1_transfer_cache_async_is_a_prompts_call_without_caches_cut_into_blocks(datadist_v1):
    # hicann/ge api/python/llm_datadist_v1: kv_cache_manager.py transfer_cache_async (a prompt's,
    # LLM_WAIT_PROCESS_TIMEOUT while it runs) and llm_utils.py ("transfer from cache to blocks is
    # not supported"); v1's KvCacheManager has no remap_registered_memory.
    manager = datadist_v1.kv_cache_manager
    cache = manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
    config = TransferConfig(DECODER_ID, [0x1000] * TENSORS)
    with pytest.raises(LLMException) as raised:
        manager.transfer_cache_async(cache, released(), [config], None, [0], BLOCK_BYTES)
    assert raised.value.status_code is S.LLM_PARAM_INVALID
    stepper = Stepper()
    task = manager.transfer_cache_async(cache, stepper, [config])
    assert stepper.next_layer() == 0
    assert task.synchronize(100) is S.LLM_WAIT_PROCESS_TIMEOUT
    stepper.go[0].set()
    assert task.synchronize(WAIT_MS) is S.LLM_NOT_YET_LINK
    with pytest.raises(AttributeError):
        manager.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_DEVICE, cache.tensor_addrs[0], 8))
    manager.deallocate_cache(cache)


def test_v1_decoders_do_not_transfer_layer_by_layer():
    decoder = LLMDataDist(LLMRole.DECODER, DECODER_ID)
    decoder.init(options())
    config = TransferConfig(PROMPT_ID, [0x1000] * TENSORS)
    try:
        cache = decoder.kv_cache_manager.allocate_cache(desc((BATCH, ENTRY_BYTES)))
        with pytest.raises(LLMException) as raised:
            decoder.kv_cache_manager.transfer_cache_async(cache, released(), [config])
        assert raised.value.status_code is S.LLM_PARAM_INVALID
    finally:
        decoder.finalize()
