"""Mooncake is imported only when a link needs it, and its absence is a clear
LLM_FEATURE_NOT_ENABLED naming what to install."""
import subprocess
import sys
import textwrap


def run(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_llmdd_and_llmdd_transfer_does_not_import_mooncake():
    out = run("""
        import sys, llmdd, llmdd.transfer
        agent = llmdd.transfer.TransferAgent(object(), 1, "127.0.0.1:0")
        agent.close()
        print(sorted(name for name in sys.modules if name.startswith("mooncake")))
    """)
    assert out.strip() == "[]"


def test_without_mooncake_a_link_raises_feature_not_enabled_naming_the_packages():
    out = run("""
        import sys
        sys.modules["mooncake"] = None        # what a missing package (or libibverbs) looks like
        from llmdd import LLMException, LLMStatusCode
        from llmdd.transfer import TransferAgent

        class Cluster:
            remote_cluster_id, remote_role_type = 1, 0
            local_ip_infos, remote_ip_infos = [], [("127.0.0.1", 9)]

        with TransferAgent(object(), 2) as agent:
            try:
                agent.link([Cluster()], 1000)
            except LLMException as error:
                print(error.status_code == LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
                print(error)
    """)
    verdict, message = out.split("\n", 1)
    assert verdict == "True"
    assert "pip install 'llmdd[transfer]'" in message and "apt-get install libibverbs1" in message
