"""Run a written ``.pte`` (ExecuTorch) or ``.onnx`` (onnxruntime) file on the CPU, checking
the input against the shape the file was exported for.

A runtime given another image size fails deep inside (ExecuTorch: "Attempted to resize a
static tensor", error 0x10); ``load_exported`` reads the exported input shape from the file
and refuses other sizes in a sentence naming it. An ExecuTorch program's batch is static (1):
larger batches run one image at a time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .extras import require_extra

FORMATS = {".pte": "executorch", ".onnx": "onnx"}


class InputSizeError(ValueError):
    """Images of a size the exported file was not made for."""


class ExportedGraph:
    """A loaded export: ``graph(images)`` -> its outputs as tensors.

    ``images``: float32 ``N x 3 x H x W`` in [0, 1] at ``image_size``; ``batch`` is the file's
    batch size (None: dynamic)."""

    def __init__(
        self, path: Path, format: str, image_size: tuple[int, int], batch: int | None, run: Callable[[torch.Tensor], list]
    ) -> None:
        self.path = path
        self.format = format
        self.image_size = image_size
        self.batch = batch
        self._run = run

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.image_size:
            height, width = self.image_size
            raise InputSizeError(
                f"{self.path} was exported for images N x 3 x {height} x {width}; got {' x '.join(map(str, images.shape))} "
                f"(resize the images, or export again with that size)"
            )
        images = images.float().contiguous()
        if self.batch is None or len(images) == self.batch:
            return [torch.as_tensor(output) for output in self._run(images)]
        pieces = [self._run(image[None]) for image in images]  # a static batch of 1
        return [torch.cat([torch.as_tensor(piece[i]) for piece in pieces]) for i in range(len(pieces[0]))]

    def latency_ms(self, runs: int = 20, warmup: int = 3) -> float:
        """Median wall time of one batch-1 call on a random image, in milliseconds."""
        image = torch.rand(1, 3, *self.image_size)
        for _ in range(warmup):
            self(image)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self(image)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000


def set_executorch_threads(threads: int) -> None:
    """The threads of ExecuTorch's shared threadpool (XNNPACK runs on it), for the whole process."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


def load_exported(path: str | Path, threads: int = 2) -> ExportedGraph:
    """Load the ``.pte`` or ``.onnx`` file at ``path`` to run on ``threads`` CPU threads."""
    path = Path(path)
    format = FORMATS.get(path.suffix)
    if format is None:
        raise ValueError(f"{path}: not an exported model (expected a {' or '.join(FORMATS)} file)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if format == "executorch":
        require_extra("mobile", "executorch.runtime", f"running {path}")
        from executorch.runtime import Runtime

        set_executorch_threads(threads)
        try:
            method = Runtime.get().load_program(path).load_method("forward")
        except RuntimeError as err:
            raise RuntimeError(
                f"{path}: the ExecuTorch runtime could not load this program ({err}); its log lines above say why. "
                "For an int8 program written by export, usually a quantization scale that XNNPACK refuses: a layer "
                "whose weights reach extreme magnitudes (look at the checkpoint's largest weights)"
            ) from err
        batch, _, height, width = method.metadata.input_tensor_meta(0).sizes()
        return ExportedGraph(path, format, (height, width), batch, lambda images: method.execute([images]))

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, (batch, _, height, width) = session.get_inputs()[0].name, session.get_inputs()[0].shape
    return ExportedGraph(
        path, format, (height, width), batch if isinstance(batch, int) else None,
        lambda images: session.run(None, {name: images.numpy()}),
    )  # fmt: skip
