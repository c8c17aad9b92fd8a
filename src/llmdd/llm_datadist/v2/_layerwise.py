"""transfer_cache_async: a cache pushed layer by layer while the model computes the next layer
(CANN's v2/llm_utils.py TransferCacheJob and TransferAsyncThread, over layer_wise_transfer_job.cc).

The call checks CANN's arguments and returns a CacheTask at once. Its worker thread takes the
layers in order: for a layer some transfer config names, it calls the caller's
LayerSynchronizer.synchronize_layer(layer, None) and, once that answers True, pushes the layer's
two tensors to each of those configs through the LLMDataDist's transfer agent: into a remote
cache by key (TransferWithCacheKeyConfig) or into raw remote addresses (TransferConfig), which
the peer takes only inside its remote-accessible memory. The first failure ends the task. No
exception leaves the worker: every outcome is a status.

Each config's destination is resolved (pinned and exposed by the peer) at its first layer and
held until its last layer moved, or the task ended otherwise (a failure, finalize, a link that
ended): one RESOLVE and one UNPIN a config, and a write and a KEEP a layer.
"""
import contextlib
import logging
import threading

from ..._limits import TENSOR_NUM_PER_LAYER
from ..status import LLMException, LLMStatusCode, status_of
from ..utils.utils import require
from .llm_types import CacheTask, TransferConfig

log = logging.getLogger("llmdd.llm_datadist")

SUCCESS = LLMStatusCode.LLM_SUCCESS


def _check_configs(cache_desc, configs, src_blocks):
    """CANN's TransferCacheJob.init: two tensors a layer; each config's source layers inside the
    cache (None: all, set on the config as CANN does), one raw address per tensor of them, and
    source batch index 0 for blocks. The number of layers."""
    require(cache_desc.num_tensors % TENSOR_NUM_PER_LAYER == 0,
            f"cache_desc.num_tensors ({cache_desc.num_tensors}) is not even")
    num_layers = cache_desc.num_tensors // TENSOR_NUM_PER_LAYER
    for config in configs:
        if config.src_layer_range is None:
            config.src_layer_range = range(num_layers)
        if src_blocks:
            require(config.src_batch_index == 0,
                    f"src_batch_index ({config.src_batch_index}) must be 0 when the source is blocks")
        layers = config.src_layer_range
        require(layers.stop <= num_layers, f"src_layer_range {layers} is outside the cache's {num_layers} layers")
        if isinstance(config, TransferConfig):
            require(len(config.dst_addrs) == len(layers) * TENSOR_NUM_PER_LAYER,
                    f"{len(layers) * TENSOR_NUM_PER_LAYER} dst_addrs expected for src_layer_range {layers}, "
                    f"got {len(config.dst_addrs)}")
    return num_layers


class LayerwiseTransfer:
    """One transfer_cache_async: a worker thread and one status per config (None until the
    config's last layer moved, or the failure that ended the task concerns it, as in CANN).
    It is what a CacheTask waits on (get, get_results)."""

    def __init__(self, agent, entry, num_layers, synchronizer, configs, blocks, timeout_status):
        self._agent = agent
        self._entry = entry           # the registry's entry of the source cache; None: not held
        self._num_layers = num_layers
        self._synchronizer = synchronizer
        self._configs = list(configs)
        self._destinations = [agent.hold_destination(config.dst_addrs if isinstance(config, TransferConfig) else None)
                              for config in self._configs]
        self._blocks = blocks         # (src_blocks, dst_blocks, dst_block_bytes)
        self.results = [None] * len(self._configs)
        self._timeout_status = timeout_status   # the answer while the worker runs: v2's LLM_TIMEOUT
        self._state = threading.Condition()
        self._cancelled = False
        self._synchronizing = False   # inside the caller's synchronize_layer, which nothing can end
        self._done = False
        self._worker = threading.Thread(target=self._run, name="llmdd-transfer-cache-async", daemon=True)

    def start(self):
        self._worker.start()

    @property
    def ended(self):
        return self._done

    def get(self, timeout_s):
        """CANN's TransferAsyncThread.get: the timeout status while the worker runs, else the first
        status that is neither success nor unset, else success."""
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            return self._timeout_status
        return next((status for status in self.results if status not in (None, SUCCESS)), SUCCESS)

    def get_results(self, timeout_s):
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            return [self._timeout_status] * len(self._configs)
        return list(self.results)

    def cancel(self):
        """No layer starts after this; a push under way ends as the agent's transfers end."""
        with self._state:
            self._cancelled = True

    def wait_ended(self):
        """Until the worker has ended, or waits in the caller's synchronize_layer (when that
        returns it ends at once, moving nothing)."""
        with self._state:
            self._state.wait_for(lambda: self._done or self._synchronizing)

    def _run(self):
        try:
            self._transfer_layers()
        except Exception:   # a status, never an exception, leaves the worker
            log.exception("transfer_cache_async failed")
            self._fail(range(len(self._configs)), LLMStatusCode.LLM_FAILED)
        finally:
            # Before the task ends: no destination stays exposed past it, however it ended.
            for held in self._destinations:
                self._agent.release_destination(held)
            with self._state:
                self._done = True
                self._state.notify_all()

    def _fail(self, indices, status):
        for index in indices:
            if self.results[index] is None:
                self.results[index] = status

    def _transfer_layers(self):
        for layer in range(self._num_layers):
            indices = [index for index, config in enumerate(self._configs) if layer in config.src_layer_range]
            if not indices:
                continue
            status = self._synchronized(layer)
            if status != SUCCESS:
                self._fail(indices, status)
                return
            for index in indices:
                config = self._configs[index]
                status = LLMStatusCode.LLM_FAILED if self._cancelled else self._transfer_layer(layer, index)
                if status != SUCCESS:
                    self.results[index] = status
                    return
                if layer == config.src_layer_range.stop - 1:
                    self.results[index] = SUCCESS

    def _synchronized(self, layer):
        """SUCCESS once the caller says the layer is computed; LLM_PARAM_INVALID when it says it is
        not (False, or an exception), as CANN answers; LLM_FAILED when finalize ended the task."""
        with self._state:
            if self._cancelled:
                return LLMStatusCode.LLM_FAILED
            self._synchronizing = True
        try:
            ready = self._synchronizer.synchronize_layer(layer, None)   # CANN gives no timeout
        except Exception:
            log.exception("synchronize_layer(%d) raised", layer)
            ready = False
        with self._state:
            self._synchronizing = False
            self._state.notify_all()
            if self._cancelled:
                return LLMStatusCode.LLM_FAILED
        if not ready:
            log.warning("transfer_cache_async: layer %d was not synchronized", layer)
            return LLMStatusCode.LLM_PARAM_INVALID
        return SUCCESS

    def _transfer_layer(self, layer, index):
        """One layer pushed to config `index`'s destination (CANN's transfer_layer), as a status;
        the destination is released with the config's last layer."""
        if self._entry is None:
            return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        config, held = self._configs[index], self._destinations[index]
        src_blocks, dst_blocks, dst_block_bytes = self._blocks
        offset = layer - config.src_layer_range.start
        last = layer == config.src_layer_range.stop - 1
        try:
            if isinstance(config, TransferConfig):
                dst_addrs = config.dst_addrs[offset * TENSOR_NUM_PER_LAYER:(offset + 1) * TENSOR_NUM_PER_LAYER]
                status = self._agent.push_layer_to_addresses(
                    config.dst_cluster_id, list(dst_addrs), self._entry, layer, config.src_batch_index, src_blocks,
                    dst_blocks, dst_block_bytes, TENSOR_NUM_PER_LAYER, held=held, release=last)
            else:
                status = self._agent.push_layer(
                    config.dst_cluster_id, config.cache_key, self._entry, layer, config.dst_layer_range.start + offset,
                    config.src_batch_index, src_blocks, dst_blocks, dst_block_bytes, TENSOR_NUM_PER_LAYER,
                    held=held, release=last)
        except LLMException as error:   # the agent's answer to arguments it cannot take
            return status_of(error.status_code)
        return status_of(status)


class LayerwiseTasks:
    """A cache manager's live layer-wise transfers, which finalize ends."""

    def __init__(self):
        self._live = set()
        self._lock = threading.Lock()

    def start(self, transfer):
        with self._lock:
            self._live = {each for each in self._live if not each.ended}
            self._live.add(transfer)
        transfer.start()
        return CacheTask(transfer)

    @contextlib.contextmanager
    def ending(self):
        """No layer starts once the block begins (finalize ends the links in it); every worker has
        ended when it is over, but one waiting in the caller's synchronize_layer, which ends when
        that returns."""
        with self._lock:
            live = list(self._live)
            self._live = set()
        for transfer in live:
            transfer.cancel()
        try:
            yield
        finally:
            for transfer in live:
                transfer.wait_ended()


def start_transfer(manager, src_cache, layer_synchronizer, transfer_configs, blocks):
    """transfer_cache_async after CacheManager's argument checks: the CacheTask of a new
    LayerwiseTransfer (LLMException for what CANN refuses before the task starts)."""
    num_layers = _check_configs(src_cache.cache_desc, transfer_configs, blocks[0])
    agent = manager._datadist._transfer_agent("transfer_cache_async")
    try:
        entry = manager._entry(src_cache)
    except LLMException:   # CANN finds the source cache in the task: its status, not an exception
        entry = None
    return manager._layerwise_tasks().start(LayerwiseTransfer(
        agent, entry, num_layers, layer_synchronizer, transfer_configs, blocks, manager._task_timeout_status))
