"""Decoded samples kept on disk as raw arrays, so later epochs skip JPEG / PNG decoding.

DeepLab's training pipeline spends most of its time decoding JPEG and PNG files; reading the
same pixels back from an ``.npy`` file is far cheaper. With ``decoded_cache_dir`` set, the
first read of a sample decodes and checks its files as usual and writes the result there;
every later read loads the arrays. VOC trainaug takes about 8 GB of disk this way.

An entry is named by a hash of its source files' paths, sizes and modification times (and of
whatever else decides the result, e.g. the class count the mask was checked against), so an
edited file is decoded again. Entries are written to a temporary name and renamed, so
DataLoader workers racing on one sample never read half a file. Bad files are never cached:
they raise ``DataProblem`` every time, as without the cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .image_io import LoadedImage

Decoded = LoadedImage | tuple[LoadedImage, np.ndarray]


class DecodedCache:
    """``get(sources, decode)``: the cached result of ``decode()`` for ``sources``, or
    ``decode()`` itself (then written to the cache).

    ``sources``: the files the result is decoded from (keyed by path, size and modification
    time) and strings for everything else it depends on.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, sources: Sequence[Path | str]) -> str:
        parts = []
        for source in sources:
            if isinstance(source, Path):
                stat = os.stat(source)
                parts.append(f"{os.path.abspath(source)}:{stat.st_size}:{stat.st_mtime_ns}")
            else:
                parts.append(source)
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def get(self, sources: Sequence[Path | str], decode: Callable[[], Decoded]) -> Decoded:
        key = self.key(sources)
        entry = self.root / key[:2] / key
        try:
            return self._read(entry)
        except FileNotFoundError:
            pass
        decoded = decode()
        self._write(entry, decoded)
        return decoded

    @staticmethod
    def _read(entry: Path) -> Decoded:
        image = LoadedImage(np.load(f"{entry}.image.npy"))
        try:  # written only for images that were converted (grayscale, RGBA, ...)
            image.conversions = Path(f"{entry}.conversions").read_text().split()
        except FileNotFoundError:
            pass
        try:
            return image, np.load(f"{entry}.mask.npy")
        except FileNotFoundError:
            return image

    @staticmethod
    def _write(entry: Path, decoded: Decoded) -> None:
        image, mask = decoded if isinstance(decoded, tuple) else (decoded, None)
        entry.parent.mkdir(exist_ok=True)
        # The image goes last: its presence is what marks the entry complete.
        if image.conversions:
            _atomic_write(Path(f"{entry}.conversions"), lambda f: f.write(" ".join(image.conversions).encode()))
        if mask is not None:
            _atomic_write(Path(f"{entry}.mask.npy"), lambda f: np.save(f, mask))
        _atomic_write(Path(f"{entry}.image.npy"), lambda f: np.save(f, image.array))


def _atomic_write(path: Path, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
