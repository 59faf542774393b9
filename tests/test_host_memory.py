"""Host-memory policy of the task CLI: for training ``fast`` where the machine has the memory,
else ``lean``; glibc's own for inference; either on request, a clear error else."""

import subprocess
import sys

import pytest

from engine import host_memory
from engine.host_memory import FAST_TRAINING_MIN_BYTES, POLICY_ENV, training_default
from engine import cli as task_cli
from deeplab_mobile.cli import main as deeplab_main
from ssdlite.cli import main as ssdlite_main


@pytest.mark.parametrize("policy", ["lean", "fast"])
def test_each_policy_applies_to_glibc(policy):
    # mallopt changes the whole process: try it in a fresh one
    code = f"from engine.host_memory import apply_host_memory_policy; print(apply_host_memory_policy({policy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_an_unknown_policy_stops_the_cli_naming_the_variable(monkeypatch):
    monkeypatch.setenv(POLICY_ENV, "quick")
    with pytest.raises(SystemExit, match=f"error: {POLICY_ENV}='quick': expected one of lean, fast"):
        ssdlite_main(["fit", "--help"])


@pytest.mark.parametrize("asked, applied", [(None, "False"), ("fast", "True")])
def test_without_a_default_only_the_variable_applies_a_policy(asked, applied, monkeypatch):
    if asked is None:
        monkeypatch.delenv(POLICY_ENV, raising=False)
    else:
        monkeypatch.setenv(POLICY_ENV, asked)
    code = "from engine.host_memory import apply_host_memory_policy; print(apply_host_memory_policy(default=None))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == applied


@pytest.mark.parametrize("main", [ssdlite_main, deeplab_main], ids=["ssdlite", "deeplab-mobile"])
def test_training_takes_the_machines_default_and_inference_keeps_glibcs_unless_asked(main, monkeypatch):
    applied = []
    # mallopt would change this whole test process: record what the CLI asks for
    monkeypatch.setattr(task_cli, "apply_host_memory_policy", lambda default: applied.append(default))
    monkeypatch.delenv(POLICY_ENV, raising=False)
    for subcommand in ("fit", "validate", "test", "predict"):
        with pytest.raises(SystemExit):
            main([subcommand, "--help"])
    assert applied == [training_default(), None, None, None]


@pytest.mark.parametrize("memory, policy", [(8 << 30, "lean"), (FAST_TRAINING_MIN_BYTES, "fast"), (None, "lean")])
def test_training_keeps_freed_tensors_only_with_the_memory_for_it(memory, policy, monkeypatch):
    monkeypatch.setattr(host_memory, "physical_memory_bytes", lambda: memory)
    assert training_default() == policy
