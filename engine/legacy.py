"""Files written before the runtime moved out of ``backbone/`` keep working.

Configs saved by a run (``config.yaml``) name classes by module path, e.g. the Trainer plugin
``backbone.checkpoint_io.AtomicCheckpointIO``; those modules now live in ``engine`` and
``core``. ``install_moved_module_aliases`` makes each old path import its new module, so such
a config (and any class path a checkpoint's hyperparameters hold) still resolves.
"""

from __future__ import annotations

import importlib
import sys

# old module path -> where it lives now (the runtime pieces a config or checkpoint can name)
MOVED_MODULES = {
    "backbone.checkpoint_io": "engine.checkpoint_io",
    "backbone.checkpoint_checks": "engine.checkpoint_checks",
    "backbone.nonfinite": "engine.nonfinite",
    "backbone.training": "engine.rng_state",
    "backbone.host_memory": "engine.host_memory",
    "backbone.task_cli": "engine.cli",
}


def install_moved_module_aliases() -> None:
    """Make ``import <old path>`` give the module's new home (idempotent)."""
    for old, new in MOVED_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
