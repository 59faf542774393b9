"""Host-memory policy of the task CLI: ``lean`` by default, ``fast`` on request, a clear error else."""

import subprocess
import sys

import pytest

from backbone.host_memory import POLICY_ENV
from ssdlite.cli import main as ssdlite_main


@pytest.mark.parametrize("policy", ["lean", "fast"])
def test_each_policy_applies_to_glibc(policy):
    # mallopt changes the whole process: try it in a fresh one
    code = f"from backbone.host_memory import apply_host_memory_policy; print(apply_host_memory_policy({policy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_an_unknown_policy_stops_the_cli_naming_the_variable(monkeypatch):
    monkeypatch.setenv(POLICY_ENV, "quick")
    with pytest.raises(SystemExit, match=f"error: {POLICY_ENV}='quick': expected one of lean, fast"):
        ssdlite_main(["fit", "--help"])
