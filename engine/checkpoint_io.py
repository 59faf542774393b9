"""Checkpoint files: written atomically, read safely, with errors that name the file.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, which for a local path
writes a temporary file in the system temp directory and then ``shutil.move``s it over the
target. When the temp directory is on another filesystem than the checkpoints (a tmpfs
``/tmp``, checkpoints on a mounted volume), that move is a copy onto the open, truncated
target: a kill during it leaves a cut ``last.ckpt`` and the previous one is gone. Nothing is
fsynced either. ``AtomicCheckpointIO`` writes a temporary file next to the target, fsyncs it and
``os.replace``s it over the target, so the target is always either the old or the new file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec.utils
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


@contextlib.contextmanager
def naming_unreadable_checkpoint(path: _PATH) -> Iterator[None]:
    """Turn any failure of ``torch.load`` inside the block into a ``CheckpointError`` naming ``path``."""
    try:
        yield
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except pickle.UnpicklingError as err:  # weights_only=True met an object it does not trust
        reason = next((line.strip() for line in str(err).splitlines() if "WeightsUnpickler" in line), str(err))
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {reason}") from err
    except Exception as err:  # torch.load of a cut or foreign file fails in many ways
        size = Path(path).stat().st_size if _is_local(path) and Path(path).is_file() else "?"
        reason = str(err).split(". ")[0] or type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or not a torch checkpoint: {reason}"
        ) from err


def read_checkpoint(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict in ``path``, loaded with ``weights_only=True``; ``CheckpointError``
    naming the file when it is missing, cut short or holds objects that are not plain data."""
    with naming_unreadable_checkpoint(path):
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict entry)")
    return checkpoint


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half written.

    The temporary file sits in the target's directory (``os.replace`` is atomic only within
    one filesystem) under a hidden name that no ``*.ckpt`` pattern matches; a kill leaves it
    behind, never a partial target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 lets the umask set the permissions, as for a file written directly.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; some filesystems cannot fsync a directory, which is fine."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _is_local(path: _PATH) -> bool:
    return fsspec.utils.get_protocol(str(path)) == "file"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints with ``atomic_torch_save`` and loads
    with ``weights_only=True`` unless told otherwise, naming the file when it cannot be read.
    Remote paths (``s3://`` ...) keep Lightning's fsspec writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        with naming_unreadable_checkpoint(path):
            return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)
