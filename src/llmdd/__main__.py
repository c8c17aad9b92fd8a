"""`python -m llmdd`: run the AllocateCache page's example and show what happened.

    python -m llmdd          the seed example: 80 x DT_FLOAT16 [1, 256] on device 0
    python -m llmdd info     the build and the device's memory
"""
import sys

import llmdd

USAGE = """usage: python -m llmdd [info]

  (no argument)  allocate the AllocateCache example's cache (80 tensors, DT_FLOAT16,
                 shape [1, 256]) on device 0, print what happened, and free it
  info           print the build (backend, version, ACL runtime version) and device 0's memory
"""


def largest_power_of_two_dividing(address):
    return address & -address if address else 0


def print_build():
    version = llmdd.runtime_version()
    print(f"llmdd {llmdd.__version__}, backend={llmdd.BACKEND}"
          + (" (host-memory simulation of the ACL runtime)" if llmdd.SIMULATED else ""))
    print(f"ACL runtime version: {'.'.join(map(str, version)) if version else 'not reported'}")


def print_memory(label, free, total):
    print(f"{label}: {free:,} bytes free of {total:,}")


def run_info():
    print_build()
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as engine:
        status = engine.Initialize({"llm.DeviceId": "0"})
        if status != llmdd.LLM_SUCCESS:
            print(f"Initialize failed: {status!r}", file=sys.stderr)
            return 1
        print(f"device {engine.device_id}")
        print_memory("device memory", *engine.device_memory_info())
    return 0


def run_seed_example():
    print_build()
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as engine:
        status = engine.Initialize({"llm.DeviceId": "0"})
        print(f"Initialize: {status!r}")
        if status != llmdd.LLM_SUCCESS:
            return 1
        before = engine.device_memory_info()
        kv_desc = llmdd.CacheDesc()
        kv_desc.num_tensors = 80
        kv_desc.data_type = llmdd.DT_FLOAT16
        kv_desc.shape = [1, 256]
        cache = llmdd.Cache()
        status = engine.AllocateCache(kv_desc, cache)
        print(f"AllocateCache({kv_desc!r}): {status!r}")
        if status != llmdd.LLM_SUCCESS:
            return 1
        after = engine.device_memory_info()
        addrs = cache.tensor_addrs
        alignment = min(largest_power_of_two_dividing(address) for address in addrs)
        print(f"device {engine.device_id}, cache_id {cache.cache_id}, {len(addrs)} tensors "
              f"of {kv_desc.size} bytes each")
        print(f"first tensor at {addrs[0]:#x}, last at {addrs[-1]:#x}; every start aligned to {alignment} bytes")
        print_memory("device memory before", *before)
        print_memory("device memory after ", *after)
        print(f"the cache takes {before[0] - after[0]:,} bytes of device memory")
        print(f"DeallocateCache({cache.cache_id}): {engine.DeallocateCache(cache.cache_id)!r}")
        print_memory("device memory freed ", *engine.device_memory_info())
    return 0


def main(argv):
    if argv in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    if argv == []:
        return run_seed_example()
    if argv == ["info"]:
        return run_info()
    print(USAGE, end="", file=sys.stderr)
    print(f"error: unexpected arguments: {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
