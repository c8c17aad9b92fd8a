"""ACL's rules on llmdd's host runtime itself, checked by a C program built from its source."""
import os
import pathlib
import shutil
import subprocess

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "src" / "llmdd"
CHECKS = pathlib.Path(__file__).resolve().parent / "c" / "acl_host_rules.c"


def test_host_runtime_keeps_acls_rules(tmp_path):
    compiler = shutil.which(os.environ.get("CC", "cc"))
    assert compiler, "a C compiler is needed to build the host runtime's checks"
    program = tmp_path / "acl_host_rules"
    subprocess.run([compiler, "-std=c11", "-O1", "-Wall", "-Werror", f"-I{SOURCE}", str(CHECKS),
                    str(SOURCE / "sim" / "acl_host.c"), "-o", str(program), "-lpthread"], check=True)
    result = subprocess.run([str(program)], capture_output=True, text=True,
                            env=dict(os.environ, LLMDD_SIM_DEVICE_MEMORY="1MiB", LLMDD_SIM_DEVICE_COUNT="8"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "0 failed"
