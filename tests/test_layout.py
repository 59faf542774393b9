"""The package boundaries the layout promises: ``backbone`` imports no Lightning, ``datamodules``
imports no model package (only ``core.constants`` of the shared base), and the data flows one
way. Checked in fresh interpreters, on what each import really loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_PACKAGES = ("backbone", "ssdlite", "deeplab_mobile", "multitask", "engine")


def loaded_after(code: str) -> set[str]:
    """Top-level names of the modules loaded by ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_backbone_imports_no_lightning():
    loaded = loaded_after("import backbone; backbone.build_backbone('mobilenet_v2', width_mult=0.35)")
    assert not {m for m in loaded if m.split(".")[0] in ("lightning", "pytorch_lightning", "engine")}


def test_datamodules_import_no_model_package():
    modules = [p.stem for p in (REPO / "datamodules").glob("*.py") if p.stem not in ("__init__", "__main__")]
    loaded = loaded_after("\n".join(f"import datamodules.{name}" for name in modules))
    assert "datamodules.coco" in loaded and "datamodules.check" in loaded
    assert not {m for m in loaded if m.split(".")[0] in MODEL_PACKAGES}
    assert {m for m in loaded if m.split(".")[0] == "core"} == {"core", "core.constants"}
