"""Optional dependencies: an import that names the pip extra to install when it fails."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """A feature's optional packages are not installed; the message names the extra."""


def require_extra(extra: str, module: str, feature: str) -> ModuleType:
    """``import module``, or a ``MissingExtraError`` saying that ``feature`` needs
    ``pip install -e '.[extra]'`` (and which import failed)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{feature} needs the '{extra}' extra: pip install -e '.[{extra}]' (import {module} failed: {error})"
        ) from error
