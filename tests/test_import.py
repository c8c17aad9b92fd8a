"""import llmdd stays cheap: no numpy, no torch, no runtime; and the main job's command line."""
import subprocess
import sys

import llmdd


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True)


def test_import_pulls_in_no_numpy_or_torch():
    code = ("import sys, llmdd, llmdd.sim\n"
            "heavy = [name for name in ('numpy', 'torch', 'torch_npu', 'json', 'ctypes') if name in sys.modules]\n"
            "print(heavy)")
    assert run("-c", code).stdout.strip() == "[]"


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
