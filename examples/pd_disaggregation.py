"""Prefill/decode disaggregation of a tiny Llama through llmdd, checked token for token.

    pip install '.[transfer,demo]' && python examples/pd_disaggregation.py [--layerwise] [--two-hosts] [--rank-table]

This process is the scheduler. It starts a prefill process and a decode process (this file again,
with --role), and serves a handful of prompts: the prefill process computes a prompt's KV cache into
the blocks of its paged KV pool and answers the request's block table; the decode process pulls those
blocks into blocks of its own pool through llmdd.llm_datadist (pull_blocks, over Mooncake's Transfer
Engine), rebuilds the model's cache from them and decodes greedily. Meanwhile this process runs the
same model in one piece (transformers' generate); it exits 1 if any request's tokens differ.

The model is a LlamaForCausalLM built from a fixed seed in every process: nothing is downloaded.
The KV layout is the paged one serving engines use: per layer a K and a V tensor of shape
[num_blocks, block_size, kv_heads, head_dim], registered with register_blocks_cache in place.
With --two-hosts (root, iproute2) the two processes run in two network namespaces joined by a
veth pair, so the KV bytes cross a network interface. With --rank-table the roles link as
vLLM-Ascend's LLMDataDistCMgrConnector does: both call link() with one rank table and wait for
query_register_mem_status to say OK, where otherwise the decode process calls link_clusters.
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time

SEED = 1234
MODEL_CONFIG = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                    initializer_range=0.2)   # a wide initialization gives less repetitive tokens
BLOCK_SIZE = 16                              # tokens per block
POOL_BLOCKS = 160                            # blocks per pool: room for 2560 tokens
PREFILL_CLUSTER, DECODE_CLUSTER = 1, 2
LINK_TIMEOUT_MS = 5000
LINK_SECONDS = 60        # a rank-table link, both roles' Mooncake engines starting on a busy machine
START_SECONDS = 120      # a role's start: importing torch and transformers, Mooncake's engine
ANSWER_SECONDS = 120     # one prefill or decode of a 2000-token request takes well under this


# ---- The model and its paged KV pool (both roles) ---------------------------------------------

def build_model():
    """The same tiny Llama in every process: a fixed seed, no weights downloaded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_grad_enabled(False)
    # One thread a process, in all three: the roles share this machine's cores, and on the 2-core
    # development machine with another process busy, two threads a process made a decode step
    # 30-60x slower (75-150 ms instead of 2.5 ms, measured).
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    return LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG)).eval()


def weights_digest(model):
    """A digest of the model's weights, so the scheduler can tell that all three processes built
    the same model before it compares a single token."""
    digest = hashlib.sha256()
    for name, parameter in model.state_dict().items():
        digest.update(name.encode())
        digest.update(parameter.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


class PagedKVPool:
    """A serving engine's KV pool: per layer a K and a V tensor [num_blocks, block_size, kv_heads,
    head_dim], handed out in blocks; a request's block table lists its blocks in token order.

    Every slot starts as NaN: a slot read before anything was written to it (a wrong block table, a
    pull that missed a block) turns the logits to NaN instead of into plausible tokens."""

    def __init__(self, model_config, num_blocks, free_list_seed):
        import torch
        self.torch = torch
        self.num_layers = model_config.num_hidden_layers
        self.kv_heads = model_config.num_key_value_heads
        self.head_dim = model_config.hidden_size // model_config.num_attention_heads
        shape = (num_blocks, BLOCK_SIZE, self.kv_heads, self.head_dim)
        self.tensors = [torch.full(shape, float("nan")) for _ in range(2 * self.num_layers)]   # K0 V0 K1 V1 ...
        # A long-running engine's free list is in no particular order; so is this one, so block
        # tables are scattered and a layout mistake cannot hide behind contiguous blocks.
        generator = torch.Generator().manual_seed(free_list_seed)
        self.free_blocks = torch.randperm(num_blocks, generator=generator).tolist()

    @property
    def block_bytes(self):
        """Bytes of one block across all layers' K and V tensors: what pulling one block moves."""
        return sum(tensor[0].nbytes for tensor in self.tensors)

    def cache_desc(self):
        from llmdd.llm_datadist import CacheDesc, DataType
        return CacheDesc(len(self.tensors), list(self.tensors[0].shape), DataType.DT_FLOAT)

    def addresses(self):
        return [tensor.data_ptr() for tensor in self.tensors]

    def allocate(self, num_tokens):
        count = math.ceil(num_tokens / BLOCK_SIZE)
        if count > len(self.free_blocks):
            raise RuntimeError(f"{num_tokens} tokens need {count} blocks, {len(self.free_blocks)} are free")
        block_table, self.free_blocks = self.free_blocks[:count], self.free_blocks[count:]
        return block_table

    def free(self, block_table):
        self.free_blocks.extend(block_table)

    def _slots(self, block_table, num_tokens):
        """Token t's slot is (block_table[t // BLOCK_SIZE], t % BLOCK_SIZE): vLLM's slot mapping."""
        positions = self.torch.arange(num_tokens)
        return self.torch.tensor(block_table)[positions // BLOCK_SIZE], positions % BLOCK_SIZE

    def write(self, model_cache, block_table, num_tokens):
        """Write a DynamicCache (per layer [1, kv_heads, seq, head_dim]) into the request's blocks."""
        blocks, offsets = self._slots(block_table, num_tokens)
        for layer in range(self.num_layers):
            keys, values = model_cache.layers[layer].keys, model_cache.layers[layer].values
            self.tensors[2 * layer][blocks, offsets] = keys[0].transpose(0, 1)
            self.tensors[2 * layer + 1][blocks, offsets] = values[0].transpose(0, 1)

    def read(self, block_table, num_tokens):
        """The model's cache (a DynamicCache) of a request, rebuilt from its blocks."""
        from transformers import DynamicCache
        blocks, offsets = self._slots(block_table, num_tokens)
        model_cache = DynamicCache()
        for layer in range(self.num_layers):
            keys = self.tensors[2 * layer][blocks, offsets].transpose(0, 1).unsqueeze(0)
            values = self.tensors[2 * layer + 1][blocks, offsets].transpose(0, 1).unsqueeze(0)
            model_cache.update(keys, values, layer)
        return model_cache

    def same_bytes(self, block_table, other_table):
        """Whether two block tables hold the same bytes in every tensor (NaN slots included)."""
        return all(self.torch.equal(tensor[block_table].view(self.torch.int32),
                                    tensor[other_table].view(self.torch.int32)) for tensor in self.tensors)


def greedy_next(logits):
    return int(logits[0, -1].argmax())


def initialized_datadist(role, cluster_id, listen_ip_info=None, rank_table_port=None):
    from llmdd.llm_datadist import LLMConfig, LLMDataDist
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    if listen_ip_info is not None:
        config.listen_ip_info = listen_ip_info
    if rank_table_port is not None:
        # vLLM-Ascend's connector settings; the port where a rank listens is llmdd's option
        # (docs/transfer.md, "Rank-table links"), its default taken unless this machine needs another.
        config.enable_remote_cache_accessible = True
        config.enable_switch_role = True
        config.ge_options = {"llmdd.RankTablePort": str(rank_table_port)}
    datadist = LLMDataDist(role, cluster_id)
    datadist.init(config.generate_options())
    return datadist


# ---- The roles: one JSON message a line on stdin, one answer a line on the channel ------------

def serve(role, listen_ip, rank_table_port):
    # The channel is the original stdout; everything else printed to stdout (by this process or a
    # library) goes to stderr, so it can never corrupt a message.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    model = build_model()
    if role == "prefill":
        Prefill(model, listen_ip, rank_table_port).run(channel)
    else:
        Decode(model, listen_ip, rank_table_port).run(channel)


def rank_table_link(datadist, message):
    """link() as vLLM-Ascend's connector calls it on both sides (add_remote_agent): the comm's id,
    once query_register_mem_status says OK (FAILED raises)."""
    from llmdd.llm_datadist import RegisterMemStatus
    ranks = {int(cluster_id): rank for cluster_id, rank in message["cluster_rank_info"].items()}
    comm_id = datadist.link(message["comm_name"], ranks, message["rank_table"])
    deadline = time.monotonic() + LINK_SECONDS
    while (status := datadist.query_register_mem_status(comm_id)) != RegisterMemStatus.OK:
        if status == RegisterMemStatus.FAILED or time.monotonic() > deadline:
            raise RuntimeError(f"the rank-table link {message['comm_name']} is {status.name}")
        time.sleep(0.1)   # the connector polls every second
    return comm_id


class Prefill:
    """Computes a prompt's KV cache into its blocks; its block pool is registered under a
    BlocksCacheKey, so decoders can pull any of its blocks."""

    def __init__(self, model, listen_ip, rank_table_port):
        from llmdd.llm_datadist import BlocksCacheKey, LLMRole
        self.model = model
        self.pool = PagedKVPool(model.config, POOL_BLOCKS, free_list_seed=SEED + PREFILL_CLUSTER)
        self.comm_id = None
        if rank_table_port is None:
            with socket.socket() as probe:   # a free port for llmdd's control protocol
                probe.bind((listen_ip, 0))
                self.port = probe.getsockname()[1]
            self.datadist = initialized_datadist(LLMRole.PROMPT, PREFILL_CLUSTER, f"{listen_ip}:{self.port}")
        else:   # the rank table says where it listens
            self.port = None
            self.datadist = initialized_datadist(LLMRole.PROMPT, PREFILL_CLUSTER, rank_table_port=rank_table_port)
        self.datadist.cache_manager.register_blocks_cache(self.pool.cache_desc(), self.pool.addresses(),
                                                          BlocksCacheKey(PREFILL_CLUSTER, 0))

    def run(self, channel):
        import torch
        from transformers import DynamicCache
        answer(channel, {"ready": True, "port": self.port, "weights": weights_digest(self.model)})
        for line in sys.stdin:
            message = json.loads(line)
            if message["op"] == "prefill":
                prompt = message["prompt"]
                started = time.perf_counter()
                model_cache = DynamicCache()
                logits = self.model(torch.tensor([prompt]), cache=model_cache).logits
                first_token = greedy_next(logits)
                prefill_s = time.perf_counter() - started
                block_table = self.pool.allocate(len(prompt))
                self.pool.write(model_cache, block_table, len(prompt))
                answer(channel, {"block_table": block_table, "num_tokens": len(prompt), "first_token": first_token,
                                 "prefill_s": prefill_s})
            elif message["op"] == "release":   # the decoder has what it needs: the blocks are free again
                self.pool.free(message["block_table"])
                answer(channel, {"released": True})
            elif message["op"] == "link":
                self.comm_id = rank_table_link(self.datadist, message)
                answer(channel, {"comm_id": self.comm_id})
        if self.comm_id is not None:
            self.datadist.unlink(self.comm_id)
        self.datadist.finalize()


class Decode:
    """Pulls a request's blocks into its own pool, rebuilds the model's cache and decodes."""

    def __init__(self, model, local_ip, rank_table_port):
        from llmdd.llm_datadist import BlocksCacheKey, LLMRole
        self.model = model
        self.local_ip = local_ip
        self.pool = PagedKVPool(model.config, POOL_BLOCKS, free_list_seed=SEED + DECODE_CLUSTER)
        self.datadist = initialized_datadist(LLMRole.DECODER, DECODE_CLUSTER, rank_table_port=rank_table_port)
        # Registered before the link: LLM-DataDist takes remote-accessible memory only then.
        self.blocks_cache = self.datadist.cache_manager.register_blocks_cache(self.pool.cache_desc(),
                                                                              self.pool.addresses())
        self.prefill_key = BlocksCacheKey(PREFILL_CLUSTER, 0)
        self.cluster = None
        self.comm_id = None

    def link(self, prefill_ip, prefill_port):
        from llmdd.llm_datadist import LLMClusterInfo, LLMStatusCode
        self.cluster = LLMClusterInfo()
        self.cluster.remote_cluster_id = PREFILL_CLUSTER
        self.cluster.append_local_ip_info(self.local_ip, 0)
        self.cluster.append_remote_ip_info(prefill_ip, prefill_port)
        status, statuses = self.datadist.link_clusters([self.cluster], LINK_TIMEOUT_MS)
        if statuses != [LLMStatusCode.LLM_SUCCESS]:
            raise RuntimeError(f"link_clusters to the prefill process: {status!r}, {statuses!r}")
        self.warm_up()

    def warm_up(self):
        # Mooncake registers each pool's memory on its first transfer; an engine warms up before
        # it serves, so the first request's pull time does not include that.
        warm_up_block = self.pool.allocate(1)
        self.pull([0], warm_up_block)
        self.pool.free(warm_up_block)

    def pull(self, src_blocks, dst_blocks, layers=None):
        ranges = {} if layers is None else {"src_layer_range": layers, "dst_layer_range": layers}
        self.datadist.cache_manager.pull_blocks(self.prefill_key, self.blocks_cache, src_blocks, dst_blocks, **ranges)

    def run(self, channel):
        import torch
        answer(channel, {"ready": True, "weights": weights_digest(self.model)})
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "link" and "rank_table" in request:
                self.comm_id = rank_table_link(self.datadist, request)
                self.warm_up()
                answer(channel, {"comm_id": self.comm_id})
                continue
            if request["op"] == "link":
                self.link(request["ip"], request["port"])
                answer(channel, {"linked": True})
                continue
            num_tokens = request["num_tokens"]
            block_table = self.pool.allocate(num_tokens)
            started = time.perf_counter()
            self.pull(request["block_table"], block_table)
            report = {"bytes": len(block_table) * self.pool.block_bytes, "pull_s": time.perf_counter() - started}
            read_from = block_table
            if request["layerwise"]:
                # The same blocks again, one layer a pull, into other blocks; decoding from these
                # checks the layer ranges, and comparing them with the whole pull checks both.
                layerwise_table = self.pool.allocate(num_tokens)
                started = time.perf_counter()
                for layer in range(self.pool.num_layers):
                    self.pull(request["block_table"], layerwise_table, range(layer, layer + 1))
                report["layerwise_pull_s"] = time.perf_counter() - started
                report["layerwise_same_bytes"] = self.pool.same_bytes(block_table, layerwise_table)
                read_from = layerwise_table
            started = time.perf_counter()
            model_cache = self.pool.read(read_from, num_tokens)
            tokens = [request["first_token"]]
            while len(tokens) < request["max_new_tokens"] and tokens[-1] != self.model.config.eos_token_id:
                logits = self.model(torch.tensor([[tokens[-1]]]), cache=model_cache).logits
                tokens.append(greedy_next(logits))
            report["decode_s"] = time.perf_counter() - started
            self.pool.free(block_table)
            if read_from is not block_table:
                self.pool.free(read_from)
            answer(channel, {"tokens": tokens, **report})
        if self.cluster is not None:
            self.datadist.unlink_clusters([self.cluster], LINK_TIMEOUT_MS)
        if self.comm_id is not None:
            self.datadist.unlink(self.comm_id)
        self.datadist.finalize()


def answer(channel, message):
    channel.write(json.dumps(message) + "\n")


# ---- The scheduler ----------------------------------------------------------------------------

class Role:
    """A role's process and its channel: a JSON line in, a JSON line back within a deadline."""

    def __init__(self, name, arguments, prefix=()):
        self.name = name
        self.process = subprocess.Popen([*prefix, sys.executable, os.path.abspath(__file__), "--role", name,
                                         *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def receive(self, seconds):
        if not self.selector.select(seconds):
            raise RuntimeError(f"the {self.name} process gave no answer in {seconds} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} process ended (exit code {self.process.wait(10)}); "
                               "its error is above")
        return json.loads(line)

    def send(self, message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def ask(self, message, seconds=ANSWER_SECONDS):
        self.send(message)
        return self.receive(seconds)

    def close(self):
        """End of input: the role unlinks, finalizes and exits; its exit code."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return "killed after 30 s"
        finally:
            self.process.stdout.close()
            self.selector.close()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.close()


def ip(*arguments):
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")


@contextlib.contextmanager
def two_network_namespaces():
    """Two namespaces joined by a veth pair, as tests/transfer/test_netns.py makes them; yields
    (namespace, address) of the prefill and of the decode side and removes both afterwards."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        raise SystemExit("--two-hosts needs root and iproute2's `ip`")
    tag = f"pdd{os.getpid() % 100000}"
    prefill_ns, decode_ns = f"{tag}p", f"{tag}d"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"   # from the pid: two runs do not collide
    made = []
    try:
        for namespace in (prefill_ns, decode_ns):
            ip("netns", "add", namespace)
            made.append(namespace)
        ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for namespace, end, address in ((prefill_ns, f"{tag}a", f"{subnet}.1"), (decode_ns, f"{tag}b", f"{subnet}.2")):
            ip("link", "set", end, "netns", namespace)
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", end)
            ip("-n", namespace, "link", "set", end, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        yield (prefill_ns, f"{subnet}.1"), (decode_ns, f"{subnet}.2")
    finally:
        for namespace in made:   # deleting a namespace deletes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


def prompts(lengths):
    """Prompts of random tokens (seeded): a tiny untrained model has no use for text."""
    import torch
    generator = torch.Generator().manual_seed(SEED)
    return [torch.randint(3, MODEL_CONFIG["vocab_size"], (length,), generator=generator).tolist()
            for length in lengths]


def single_process_tokens(model, prompt, max_new_tokens):
    """The reference: the whole model in one process, transformers' own greedy generate."""
    import torch
    ids = torch.tensor([prompt])
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=model.config.eos_token_id)
    return output[0, len(prompt):].tolist()


def swap_first_and_last(block_table):
    """A deliberately broken block table. Swapping two full blocks would not change the tokens:
    cached keys carry their positions (RoPE is applied before caching) and attention does not care
    in which order it sees them. The last block is partly empty, so this swap loses real tokens."""
    if len(block_table) < 2:
        raise SystemExit("--swap-a-block needs prompts longer than one block")
    return [block_table[-1], *block_table[1:-1], block_table[0]]


def line_of(index, prompt, tokens, prefill, decode, matches):
    megabytes = decode["bytes"] / 2**20
    pulled = (f"pulled {megabytes:.2f} MiB in {decode['pull_s'] * 1e3:.2f} ms "
              f"({decode['bytes'] / decode['pull_s'] / 1e9:.2f} GB/s)")
    if "layerwise_pull_s" in decode:
        pulled += (f", layer by layer {decode['layerwise_pull_s'] * 1e3:.2f} ms "
                   f"({decode['bytes'] / decode['layerwise_pull_s'] / 1e9:.2f} GB/s)")
    steps = max(len(tokens) - 1, 1)   # the first token comes from the prefill
    return (f"request {index}: prompt {len(prompt)} tokens, {len(tokens)} generated, "
            f"prefill {prefill['prefill_s'] * 1e3:.1f} ms, {pulled}, decode {decode['decode_s'] * 1e3:.1f} ms "
            f"({decode['decode_s'] / steps * 1e3:.2f} ms/token): {'tokens match' if matches else 'TOKENS DIFFER'}")


def rank_table(prefill_ip, decode_ip):
    """The rank table vLLM-Ascend's connector builds for a prefill and a decode device
    (add_remote_agent): version 1.2, rank 0 the prefill's, one server entry when both are on one
    host. The device ids are two devices' of one server: on one host, where both device_ips are
    one address, each rank listens at llmdd.RankTablePort plus its device_id."""
    devices = [{"device_id": "0", "device_ip": prefill_ip, "rank_id": "0"},
               {"device_id": "1", "device_ip": decode_ip, "rank_id": "1"}]
    if prefill_ip == decode_ip:
        servers = [{"device": devices, "server_id": prefill_ip}]
    else:
        servers = [{"device": [device], "server_id": ip} for device, ip in zip(devices, (prefill_ip, decode_ip))]
    return json.dumps({"version": "1.2", "server_count": str(len(servers)), "status": "completed",
                       "server_list": servers})


def link_by_rank_table(prefill, decode, prefill_ip, decode_ip):
    """Both roles link() one comm at once, as the connector's two sides do; its ids on each side."""
    message = {"op": "link", "comm_name": f"pd_comm_{prefill_ip}_{decode_ip}",
               "cluster_rank_info": {PREFILL_CLUSTER: 0, DECODE_CLUSTER: 1},
               "rank_table": rank_table(prefill_ip, decode_ip)}
    for role in (prefill, decode):
        role.send(message)
    return [role.receive(LINK_SECONDS + ANSWER_SECONDS)["comm_id"] for role in (prefill, decode)]


def schedule(arguments, prefill_place, decode_place):
    """Serve every prompt through the two roles; the number of requests whose tokens differ."""
    (prefill_prefix, prefill_ip), (decode_prefix, decode_ip) = prefill_place, decode_place
    port_arguments = [] if arguments.rank_table_port is None else ["--rank-table-port", str(arguments.rank_table_port)]
    roles = []
    try:
        prefill = Role("prefill", ["--listen-ip", prefill_ip, *port_arguments], prefill_prefix)
        roles.append(prefill)
        decode = Role("decode", ["--listen-ip", decode_ip, *port_arguments], decode_prefix)
        roles.append(decode)
        model = build_model()   # the reference is computed while the roles start
        requests = prompts(arguments.prompt_lengths)
        references = [single_process_tokens(model, prompt, arguments.max_new_tokens) for prompt in requests]
        prefill_ready, decode_ready = prefill.receive(START_SECONDS), decode.receive(START_SECONDS)
        if not prefill_ready["weights"] == decode_ready["weights"] == weights_digest(model):
            raise RuntimeError("the three processes did not build the same model")
        if arguments.rank_table_port is None:
            decode.ask({"op": "link", "ip": prefill_ip, "port": prefill_ready["port"]})
        else:
            comm_ids = link_by_rank_table(prefill, decode, prefill_ip, decode_ip)
            print(f"linked by a rank table: comm {comm_ids[0]} on the prefill side, {comm_ids[1]} on the decode "
                  "side", flush=True)

        mismatches, totals = 0, {"bytes": 0, "pull_s": 0.0, "layerwise_pull_s": 0.0, "prefill_s": 0.0}
        for index, (prompt, reference) in enumerate(zip(requests, references)):
            prefilled = prefill.ask({"op": "prefill", "prompt": prompt})
            block_table = prefilled["block_table"]
            sent_table = swap_first_and_last(block_table) if arguments.swap_a_block else block_table
            # What a serving engine's scheduler sends the decoder: where the KV is, how long it is.
            decoded = decode.ask({"op": "decode", "block_table": sent_table, "num_tokens": prefilled["num_tokens"],
                                  "first_token": prefilled["first_token"], "max_new_tokens": arguments.max_new_tokens,
                                  "layerwise": arguments.layerwise})
            prefill.ask({"op": "release", "block_table": block_table})
            matches = decoded["tokens"] == reference and decoded.get("layerwise_same_bytes", True)
            mismatches += not matches
            print(line_of(index, prompt, decoded["tokens"], prefilled, decoded, matches), flush=True)
            if decoded["tokens"] != reference:
                print(f"  single process: {reference}\n  disaggregated:  {decoded['tokens']}")
            if not decoded.get("layerwise_same_bytes", True):
                print("  the layer-by-layer pull brought other bytes than the whole pull")
            totals["prefill_s"] += prefilled["prefill_s"]
            for name in ("bytes", "pull_s", "layerwise_pull_s"):
                totals[name] += decoded.get(name, 0)
        # The decoder first: it unlinks while the prefill process still answers.
        exit_codes = {role.name: role.close() for role in reversed(roles)}
        roles.clear()
    finally:
        for role in roles:
            role.kill()

    count = len(requests)
    summary = (f"{count - mismatches} of {count} requests token-identical to the single-process run; "
               f"pulled {totals['bytes'] / 2**20:.2f} MiB in {totals['pull_s'] * 1e3:.1f} ms "
               f"({totals['bytes'] / totals['pull_s'] / 1e9:.2f} GB/s)")
    if arguments.layerwise:
        summary += (f", layer by layer {totals['layerwise_pull_s'] * 1e3:.1f} ms "
                    f"({totals['bytes'] / totals['layerwise_pull_s'] / 1e9:.2f} GB/s)")
    print(f"{summary}; prefill {totals['prefill_s'] * 1e3:.1f} ms in all; process exit codes: "
          + ", ".join(f"{name} {code}" for name, code in exit_codes.items()), flush=True)
    if any(code != 0 for code in exit_codes.values()):
        raise RuntimeError(f"a role did not exit cleanly: {exit_codes}")
    return mismatches


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-lengths", type=lambda text: [int(n) for n in text.split(",")],
                        default=[64, 256, 1024, 20, 500], help="comma-separated prompt lengths in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layerwise", action="store_true",
                        help="also pull each request layer by layer (src/dst_layer_range) and decode from that")
    parser.add_argument("--two-hosts", action="store_true",
                        help="run the roles in two network namespaces joined by a veth pair (root)")
    parser.add_argument("--swap-a-block", action="store_true",
                        help="break each block table on purpose, to see the check fail")
    parser.add_argument("--rank-table", action="store_true",
                        help="link as vLLM-Ascend's LLMDataDistCMgrConnector does: link() with a rank table on both "
                             "sides, then query_register_mem_status until OK")
    parser.add_argument("--role", choices=["prefill", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--listen-ip", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--rank-table-port", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role:
        return serve(arguments.role, arguments.listen_ip, arguments.rank_table_port)
    longest = max(arguments.prompt_lengths)
    # With --layerwise the decoder holds two copies of a prompt's blocks at once.
    if min(arguments.prompt_lengths) < 1 or 2 * math.ceil(longest / BLOCK_SIZE) > POOL_BLOCKS \
            or longest + arguments.max_new_tokens > MODEL_CONFIG["max_position_embeddings"]:
        parser.error(f"prompt lengths must be in [1, {POOL_BLOCKS * BLOCK_SIZE // 2}] and leave room for the "
                     "new tokens")
    if arguments.rank_table:   # a free port, rather than llmdd's default, on a machine others share
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            arguments.rank_table_port = probe.getsockname()[1]
    # A terminated scheduler still stops its roles and removes its namespaces (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.ExitStack() as stack:
        if arguments.two_hosts:
            (prefill_ns, prefill_ip), (decode_ns, decode_ip) = stack.enter_context(two_network_namespaces())
            places = ((("ip", "netns", "exec", prefill_ns), prefill_ip),
                      (("ip", "netns", "exec", decode_ns), decode_ip))
            where = f"in two network namespaces, {prefill_ip} and {decode_ip}"
        else:
            places, where = (((), "127.0.0.1"), ((), "127.0.0.1")), "on 127.0.0.1"
        print(f"prefill and decode {where}; Llama {MODEL_CONFIG['num_hidden_layers']} layers, hidden "
              f"{MODEL_CONFIG['hidden_size']}, {MODEL_CONFIG['num_key_value_heads']} KV heads, float32; "
              f"blocks of {BLOCK_SIZE} tokens", flush=True)
        mismatches = schedule(arguments, *places)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
