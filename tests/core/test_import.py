"""import llmdd stays cheap: no numpy, no torch, no runtime; and the main job's command line."""
import pickle
import subprocess
import sys

import llmdd


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True)


def test_import_pulls_in_no_numpy_or_torch():
    # Compared with what the interpreter had before: an editable install's loader brings json itself.
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "import llmdd, llmdd.sim\n"
            "heavy = [name for name in ('numpy', 'torch', 'torch_npu', 'json', 'ctypes', 'enum')\n"
            "         if name in sys.modules and name not in before]\n"
            "print(heavy)")
    assert run("-c", code).stdout.strip() == "[]"


ENUM_NAMES = ("LLMStatusCode", "DataType", "CachePlacement", "LlmRole")


def test_import_builds_no_enum_until_one_is_used():
    code = ("import llmdd, llmdd._desc\n"
            f"def built(): return [name for name in {ENUM_NAMES!r} if name in vars(llmdd._desc)]\n"
            "print(built())\n"
            "llmdd.CacheDesc(80, [1, 256], 1)\n"
            "print(built())\n"
            "llmdd.DT_FLOAT16\n"
            "print(built())")
    result = run("-c", code)
    assert result.stdout.split("\n")[:3] == ["[]", "[]", "['DataType']"], result.stderr


def test_the_drop_in_builds_none_of_the_engines_enums_at_import():
    code = ("import llmdd._desc, llmdd.llm_datadist\n"
            f"print([name for name in {ENUM_NAMES!r} if name in vars(llmdd._desc)])")
    result = run("-c", code)
    assert result.stdout.strip() == "[]", result.stderr


def test_enum_values_are_the_members_values_without_building_them():
    import llmdd._desc
    for name in ENUM_NAMES:
        values = llmdd._desc.enum_values(name)
        assert values == {member: getattr(llmdd._desc, name)[member].value for member in values}


def test_each_enum_is_built_once():
    # (The drop-in's enums are classes of their own with CANN's names: tests/dropin/test_names.py.)
    code = ("import llmdd, llmdd._desc\n"
            "print(llmdd.DataType is llmdd._desc.DataType,\n"
            "      llmdd.DT_FLOAT16 is llmdd.DataType.DT_FLOAT16 is llmdd._desc.DT_FLOAT16,\n"
            "      llmdd.Placement is llmdd.CachePlacement, llmdd.LLMRole is llmdd.LlmRole)")
    assert run("-c", code).stdout.split() == ["True"] * 4


def test_threads_that_reach_an_enum_first_together_get_one_class():
    code = ("import threading, llmdd\n"
            "start = threading.Barrier(8)\n"
            "seen = []\n"
            "def first_use():\n"
            "    start.wait()\n"
            "    seen.append((llmdd.DataType, llmdd.LlmDataDist(0, 1).role, llmdd.CacheDesc(1, [1], 1).data_type))\n"
            "threads = [threading.Thread(target=first_use) for _ in range(8)]\n"
            "for thread in threads: thread.start()\n"
            "for thread in threads: thread.join()\n"
            "print(len(seen), len({id(item) for row in seen for item in row}))")
    assert run("-c", code).stdout.split() == ["8", "3"]


def test_a_pickled_member_loads_in_a_fresh_process():
    code = ("import pickle, sys, llmdd\n"
            "member = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            "print(member is llmdd.LLM_DEVICE_OUT_OF_MEMORY, type(member).__name__)")
    result = run("-c", code, pickle.dumps(llmdd.LLM_DEVICE_OUT_OF_MEMORY).hex())
    assert result.stdout.split() == ["True", "LLMStatusCode"], result.stderr


def test_first_status_of_a_fresh_process_is_a_status_code_member():
    # The engine builds LLMStatusCode with its first status; the Pythonic initialize returns none.
    code = ("import llmdd\n"
            "dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)\n"
            "dd.initialize({'llm.DeviceId': '0'})\n"
            "status = dd.Initialize({'llm.DeviceId': '0'})\n"
            "print(type(status).__name__, status is llmdd.LLM_SUCCESS)\n"
            "print(dd.DeallocateCache(12345) is llmdd.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST)\n"
            "dd.Finalize()")
    result = run("-c", code)
    assert result.stdout.split() == ["LLMStatusCode", "True", "True"], result.stderr


def test_star_import_gives_every_public_name():
    code = ("from llmdd import *\n"
            "import llmdd\n"
            "print(all(globals()[name] is getattr(llmdd, name) for name in llmdd.__all__),\n"
            "      DT_FLOAT16 is DataType.DT_FLOAT16, LLM_SUCCESS is LLMStatusCode.LLM_SUCCESS,\n"
            "      Placement.DEVICE is CachePlacement.kDevice, LLMRole.PROMPT is LlmRole.kPrompt)")
    assert run("-c", code).stdout.split() == ["True"] * 5


def test_unbuilt_names_are_listed_and_unknown_names_are_attribute_errors():
    code = ("import llmdd, llmdd._desc\n"
            f"print(all(name in dir(llmdd) and name in dir(llmdd._desc) for name in {ENUM_NAMES!r}),\n"
            "      'DT_FLOAT16' in dir(llmdd), '__version__' in dir(llmdd),\n"
            "      hasattr(llmdd, 'DT_NO_SUCH_TYPE'), hasattr(llmdd._desc, 'LLM_NO_SUCH_STATUS'))")
    assert run("-c", code).stdout.split() == ["True", "True", "True", "False", "False"]


def test_import_touches_no_runtime():
    code = ("import llmdd, llmdd.sim\n"
            "print(llmdd.sim.call_count('aclInit'), llmdd.sim.call_count('aclrtSetDevice'))\n"
            "llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)\n"
            "print(llmdd.sim.call_count('aclInit'))")
    result = run("-c", code)
    if llmdd.SIMULATED:
        assert result.stdout.split() == ["0", "0", "0"]
    else:
        assert "runtime=acl" in result.stderr


def test_build_is_reported():
    assert llmdd.BACKEND in ("sim", "acl")
    assert llmdd.SIMULATED == (llmdd.BACKEND == "sim")
    assert isinstance(llmdd.__version__, str) and llmdd.__version__.count(".") == 2


def test_main_job_runs_the_seed_example():
    result = run("-m", "llmdd")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"runtime={llmdd.BACKEND}" in out or f"backend={llmdd.BACKEND}" in out
    assert "AllocateCache(CacheDesc(num_tensors=80, shape=[1, 256], data_type=DataType.DT_FLOAT16" in out
    assert "LLM_SUCCESS" in out and "80 tensors of 512 bytes each" in out
    assert "aligned to" in out and "device memory before" in out and "device memory after" in out


def test_main_job_info():
    result = run("-m", "llmdd", "info")
    assert result.returncode == 0, result.stderr
    assert "device 0" in result.stdout and "bytes free of" in result.stdout


def test_main_job_rejects_bad_arguments_with_usage():
    result = run("-m", "llmdd", "--frobnicate")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m llmdd")


def test_the_transfer_layer_carries_keys_without_the_drop_in():
    # Layers import only what is below them: the control protocol's keys are tier-2 values, so
    # carrying a key to a peer and back loads no drop-in module.
    code = ("import sys\n"
            "from llmdd._cache_keys import BlocksKey, IdKey, RequestKey\n"
            "from llmdd.transfer import _protocol as wire\n"
            "keys = [RequestKey(1, 2, 0, 2**64 - 1), BlocksKey(1, 0), IdKey(1, 5, 0)]\n"
            "assert [wire.key_from_fields(wire.key_fields(key)) for key in keys] == keys\n"
            "print(sorted(name for name in sys.modules if name.startswith('llmdd.llm_datadist')))")
    result = run("-c", code)
    assert result.stdout.strip() == "[]", result.stderr
