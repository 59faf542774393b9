"""Pretrained-weight resolution and checked loading for backbones.

``pretrained`` is ``False``, ``True`` (torchvision's ``IMAGENET1K_V1``, the weights the project
keeps offline), the name of a member of a torchvision ``Weights`` enum (``"IMAGENET1K_V2"``,
``"DEFAULT"``), or the path of a local ``.pth`` state dict. Everything loads with
``weights_only=True``.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torchvision.models import WeightsEnum

PretrainedSpec = bool | str | os.PathLike


def shorten(items: list[str], limit: int = 8) -> str:
    """``items`` joined by commas, cut after ``limit`` with a count of the rest."""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def shape_mismatches(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> list[str]:
    """``"key (file shape, model shape)"`` for every key both hold with different shapes."""
    return [
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]


def load_checked(
    module: nn.Module, state_dict: dict[str, torch.Tensor], source: str, ignore_prefixes: Iterable[str] = ()
) -> None:
    """Load ``state_dict`` into ``module`` key for key, or raise naming every key that does not fit.

    Keys of the file under ``ignore_prefixes`` (a classifier the backbone does not have, say)
    are skipped; any other missing, unexpected or wrongly shaped key is an error.
    """
    ignore = tuple(ignore_prefixes)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own and not k.startswith(ignore)]
    mismatched = shape_mismatches(own, state_dict)
    problems = []
    if missing:
        problems.append(f"missing keys: {shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {shorten(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {shorten(mismatched)}")
    if problems:
        raise ValueError(f"weights {source} do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({k: state_dict[k] for k in own})


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or non-torch file: say which file
        raise ValueError(f"weights file {path} could not be read as a torch state dict: {err}") from err
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"weights file {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def _load_enum(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as err:
        file_name = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"pretrained weights {weights} are not in the torch hub cache and could not be downloaded "
            f"({err}). Put {file_name} into {hub_dir} (`make weights` does it for MobileNetV2) or pass "
            "a local .pth path as `pretrained`."
        ) from err


def resolve_state_dict(pretrained: PretrainedSpec, weights_enum: type[WeightsEnum]) -> tuple[dict, str] | None:
    """``(state dict, description)`` for a ``pretrained`` spec, or ``None`` when it is ``False``."""
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        pretrained = "IMAGENET1K_V1"
    if isinstance(pretrained, str) and pretrained in weights_enum.__members__:
        weights = weights_enum[pretrained]
        return _load_enum(weights), str(weights)
    path = Path(pretrained)
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"} or path.exists():
        return _load_file(path), str(path)
    raise ValueError(
        f"pretrained={pretrained!r} is neither a weights name of {weights_enum.__name__} "
        f"({', '.join(weights_enum.__members__)}) nor a weights file"
    )
