"""A peer process for the C++ API's transfer calls: an llmdd.LlmDataDist that listens for links
(llm.ListenIpInfo) and is driven by JSON lines, like transfer_support's peers.

`python tests/engine_peer.py CLUSTER_ID LISTEN_IP REMOTE_ACCESSIBLE` (REMOTE_ACCESSIBLE "0" or
"1": llm.EnableRemoteCacheAccessible) prints {"port": ...} once the engine listens, then
answers one JSON command per line.
"""
import ctypes
import json
import sys

import numpy
from transfer_support import free_port, pattern

import llmdd

LISTEN_ATTEMPTS = 20


def tensor(cache, index):
    nbytes = cache.cache_desc.size
    return numpy.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(cache.tensor_addrs[index]))


def _serve(cluster_id, listen_ip, remote_accessible):
    engine = llmdd.LlmDataDist(cluster_id, llmdd.LlmRole.kPrompt)
    for _ in range(LISTEN_ATTEMPTS):
        port = free_port(listen_ip)
        status = engine.Initialize({"llm.ListenIpInfo": f"{listen_ip}:{port}", "llm.SyncKvCacheWaitTime": "3000",
                                    "llm.EnableRemoteCacheAccessible": remote_accessible})
        if status == llmdd.LLM_SUCCESS:
            break
    else:
        raise SystemExit(f"cannot listen on {listen_ip}: {status!r}")
    print(json.dumps({"port": port}), flush=True)
    caches = {}
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "allocate":
                cache = llmdd.Cache()
                desc = llmdd.CacheDesc(command["num_tensors"], [command["batch"], command["block_bytes"]],
                                       llmdd.DT_UINT8)
                status = engine.AllocateCache(desc, cache)
                assert status == llmdd.LLM_SUCCESS, status
                caches[cache.cache_id] = cache
                for t in range(command["num_tensors"]):
                    tensor(cache, t)[:] = pattern(cluster_id, cache.cache_id, t, desc.size)
                answer = {"cache_id": cache.cache_id}
            elif op == "deallocate":
                answer = {"status": int(engine.DeallocateCache(command["cache_id"]))}
            elif op == "tensor":
                answer = {"hex": tensor(caches[command["cache_id"]], command["index"]).tobytes().hex()}
            elif op == "link":
                remote = llmdd.IpInfo(command["ip"], command["port"])
                rets = []
                status = engine.LinkLlmClusters([llmdd.ClusterInfo(command["cluster_id"], 1, [], [remote])], rets,
                                                3000)
                answer = {"status": int(status)}
            elif op == "pull_cache":
                status = engine.PullKvCache(llmdd.CacheIndex(command["remote"], command["remote_cache_id"], 0),
                                            caches[command["cache_id"]])
                answer = {"status": int(status)}
            elif op == "push_cache":
                status = engine.PushKvCache(caches[command["cache_id"]],
                                            llmdd.CacheIndex(command["remote"], command["remote_cache_id"],
                                                             command["remote_batch_index"]))
                answer = {"status": int(status)}
            elif op == "finalize":
                engine.Finalize()
                answer = {}
            else:
                answer = {"error": f"unknown op {op}"}
        except Exception as error:  # reported to the test, which fails with it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)
    engine.Finalize()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
