"""Runs CANN's own Python tests (hicann/hixl, tests/python) against the drop-in, and says which pass.

    python tools/cann_tests.py HIXL [--junit FILE]

HIXL is a checkout of hicann/hixl, or its bare git directory (the tests are read from HEAD). The
tests are copied to a temporary directory, never into this repository (they are CANN's code), and
run with pytest under an import hook that makes `llm_datadist` and its submodules name
`llmdd.llm_datadist`'s, so each test runs unchanged with only the import changed. A test that needs
what only CANN's build has (its C++ extension `llm_datadist_wrapper`, here an empty module so that
the tests beside those that patch it run; its stubbed HCCL, whose links need no peer; `hixl`;
private log helpers) fails here; docs/dropin.md says which and why.

Run it with the python that has llmdd installed; it needs network access to nothing.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

TESTS = "tests/python"
RUN_SECONDS = 1800   # the whole run; a test that waits for a peer CANN stubs out must not hang it

# Written into the temporary directory as conftest.py: pytest loads it before any test module.
ALIAS_HOOK = '''
import importlib
import importlib.abc
import importlib.util
import sys

import types

OURS = "llmdd.llm_datadist"
# CANN's C++ binding, which llmdd does not have: an empty module, so that a test module importing
# it runs its tests that do not use it; those that patch or call it fail.
# `from llm_datadist import llm_datadist_wrapper` looks for it under the package's own name.
ABSENT_BINDING = ("llm_datadist.llm_datadist_wrapper", OURS + ".llm_datadist_wrapper")


class DropInAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """llm_datadist[.x] is llmdd.llm_datadist[.x]: the same module objects."""

    def find_spec(self, name, path=None, target=None):
        if name in ABSENT_BINDING:
            return importlib.util.spec_from_loader(name, self)
        if name != "llm_datadist" and not name.startswith("llm_datadist."):
            return None
        ours = OURS + name[len("llm_datadist"):]
        if importlib.util.find_spec(ours) is None:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        if spec.name in ABSENT_BINDING:
            return types.ModuleType(spec.name, "CANN's C++ binding: absent from llmdd")
        return importlib.import_module(OURS + spec.name[len("llm_datadist"):])

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, DropInAlias())
'''


def read_tests(hixl, into):
    """Copies HIXL's tests/python/*.py into `into`; returns their names."""
    if os.path.isdir(os.path.join(hixl, TESTS)):
        names = sorted(name for name in os.listdir(os.path.join(hixl, TESTS)) if name.endswith(".py"))
        for name in names:
            with open(os.path.join(hixl, TESTS, name), "rb") as source, open(os.path.join(into, name), "wb") as copy:
                copy.write(source.read())
        return names
    listing = subprocess.run(["git", "-C", hixl, "ls-tree", "--name-only", f"HEAD:{TESTS}"],
                             check=True, capture_output=True, text=True).stdout.split()
    names = sorted(name for name in listing if name.endswith(".py"))
    for name in names:
        text = subprocess.run(["git", "-C", hixl, "show", f"HEAD:{TESTS}/{name}"],
                              check=True, capture_output=True).stdout
        with open(os.path.join(into, name), "wb") as copy:
            copy.write(text)
    return names


def outcomes(junit_file):
    """[(test id, 'passed' | 'failed' | 'skipped', first line of the reason)] from pytest's junit xml."""
    results = []
    for case in ElementTree.parse(junit_file).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}.{case.get('name')}"
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if problem is None:
            results.append((test_id, "passed", ""))
        else:
            reason = (problem.get("message") or problem.text or "").strip().splitlines()
            results.append((test_id, "skipped" if problem.tag == "skipped" else "failed", reason[0] if reason else ""))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hixl", help="a checkout of hicann/hixl, or its bare git directory")
    parser.add_argument("--junit", help="also keep pytest's junit xml here")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmdd-cann-tests-") as scratch:
        tests = os.path.join(scratch, "cann_tests")
        os.mkdir(tests)
        names = read_tests(arguments.hixl, tests)
        with open(os.path.join(tests, "conftest.py"), "w") as hook:
            hook.write(ALIAS_HOOK)
        with open(os.path.join(scratch, "pytest.ini"), "w") as ini:
            ini.write("[pytest]\n")
        junit = arguments.junit or os.path.join(scratch, "junit.xml")
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-c",
                        os.path.join(scratch, "pytest.ini"), "--rootdir", scratch, f"--junitxml={junit}",
                        "-o", "faulthandler_timeout=120",
                        *[os.path.join(tests, name) for name in names if name.startswith("test_")]],
                       cwd=scratch, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=RUN_SECONDS)
        results = outcomes(junit)
    for test_id, outcome, reason in results:
        print(f"{outcome:8} {test_id}" + (f"  -- {reason[:160]}" if reason else ""))
    counts = {kind: sum(1 for _, outcome, _ in results if outcome == kind) for kind in ("passed", "failed", "skipped")}
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped of {len(results)}")


if __name__ == "__main__":
    main()
