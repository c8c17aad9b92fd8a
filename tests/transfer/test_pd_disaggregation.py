"""examples/pd_disaggregation.py end to end: a prefill and a decode process serve two short
prompts through the drop-in (register_blocks_cache, link_clusters or a rank-table link, pull_blocks)
and the tokens are those of the model run in one process; a block table broken on purpose makes
them differ."""
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from support.network import mooncake_missing

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples",
                       "pd_disaggregation.py")
# Two prompts, one and a half and two and a half blocks of 16 tokens: the last block of each is partial.
SHORT_RUN = ["--prompt-lengths", "21,40", "--max-new-tokens", "6"]
RUN_SECONDS = 150   # three processes importing torch and transformers on a busy 2-core machine: ~20 s

missing = mooncake_missing() or next((f"examples/pd_disaggregation.py needs {name} (pip install '.[demo]')"
                                      for name in ("torch", "transformers") if importlib.util.find_spec(name) is None),
                                     None)
pytestmark = [pytest.mark.skipif(missing is not None, reason=str(missing)),
              pytest.mark.sim_only]   # torch CPU tensors stand for device memory only on the sim build

REQUEST_LINE = re.compile(r"^request (\d+): prompt (\d+) tokens, (\d+) generated, .*: (tokens match|TOKENS DIFFER)$",
                          re.MULTILINE)


def run_example(*arguments):
    """The example's exit code, output and pid; a run past RUN_SECONDS is terminated (the example
    then stops its processes and removes its namespaces) and fails the test."""
    process = subprocess.Popen([sys.executable, EXAMPLE, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        output, errors = process.communicate(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, errors = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, errors = process.communicate()
        pytest.fail(f"the example ran past {RUN_SECONDS} s:\n{output}\n{errors[-4000:]}")
    return process.returncode, output, errors, process.pid


def requests_of(output):
    """(prompt length, tokens generated, verdict) of each request line the example printed."""
    return [(int(prompt), int(generated), verdict) for _, prompt, generated, verdict in REQUEST_LINE.findall(output)]


def assert_token_identical_run(returncode, output, errors):
    assert returncode == 0, f"{output}\n{errors[-4000:]}"
    assert requests_of(output) == [(21, 6, "tokens match"), (40, 6, "tokens match")], output
    assert "2 of 2 requests token-identical to the single-process run" in output
    assert "process exit codes: decode 0, prefill 0" in output


def test_two_prompts_decode_to_the_single_process_tokens_pulled_whole_and_layer_by_layer():
    returncode, output, errors, _ = run_example(*SHORT_RUN, "--layerwise")
    assert_token_identical_run(returncode, output, errors)
    assert output.count("layer by layer") == 3                    # both requests and the summary
    assert "other bytes than the whole pull" not in output


def test_rank_table_mode_links_as_vllm_ascends_connector_and_gives_the_single_process_tokens():
    returncode, output, errors, _ = run_example(*SHORT_RUN, "--rank-table")
    assert "linked by a rank table: comm 1 on the prefill side, 1 on the decode side" in output
    assert_token_identical_run(returncode, output, errors)


def test_a_swapped_block_makes_the_tokens_differ_and_the_run_fail():
    returncode, output, errors, _ = run_example(*SHORT_RUN, "--swap-a-block")
    assert returncode == 1, f"{output}\n{errors[-4000:]}"
    assert requests_of(output) == [(21, 6, "TOKENS DIFFER"), (40, 6, "TOKENS DIFFER")], output
    single, disaggregated = (re.findall(rf"^  {label}:\s+(\[.*\])$", output, re.MULTILINE)
                             for label in ("single process", "disaggregated"))
    assert len(single) == len(disaggregated) == 2 and all(a != b for a, b in zip(single, disaggregated))
    assert "0 of 2 requests token-identical" in output
    assert "process exit codes: decode 0, prefill 0" in output    # the roles themselves ran cleanly


def namespaces():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout


@pytest.mark.parametrize("linking", [[], ["--rank-table"]], ids=["link_clusters", "rank_table"])
def test_two_network_namespaces_give_the_single_process_tokens_and_are_removed(linking):
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    probe = f"pddprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not allowed here: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)

    returncode, output, errors, pid = run_example(*SHORT_RUN, "--two-hosts", *linking)
    assert "in two network namespaces" in output
    assert ("linked by a rank table" in output) == bool(linking)
    assert_token_identical_run(returncode, output, errors)
    assert f"pdd{pid % 100000}" not in namespaces()               # the example removed both
