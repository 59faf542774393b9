"""``DeepLabModule``: Lightning training and evaluation of a DeepLab segmenter (the paper's protocol).

Cross-entropy over logits at the input size (labels are never downsampled) with ignore label
255 and optional class weights; SGD with momentum 0.9 and weight decay 4e-5 on conv weights;
poly learning rate ``lr * (1 - t / T) ** 0.9`` stepped per iteration. Validation and test
accumulate one confusion matrix over the whole set (``SegmentationScores``) and log
``{stage}/mIoU``, ``{stage}/pixel_accuracy`` and ``{stage}/iou/<class>``, and ``{stage}/loss``,
the cross-entropy over all labelled pixels of the set (the same for any batching or DDP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from backbone import load_checked
from core.constants import IGNORE_INDEX
from datamodules.image_io import save_palette_png
from engine import TaskModule
from engine.checkpoint_checks import check_module_class
from engine.checkpoint_io import read_checkpoint
from engine.prediction_writer import save_picture

from .inference import multi_scale_flip_probabilities
from .metrics import SegmentationScores, SetCrossEntropy
from .model import HeadName, build_deeplab
from .resize import resize_bilinear
from .visualize import draw_label_map


class DeepLabModule(TaskModule):
    """Batches follow the project contract: training/validation/test ``(images, masks)`` with
    float ``N x 3 x H x W`` images in [0, 1] and int64 ``N x H x W`` masks (255 = ignore);
    predict ``(images, metas)`` with ``metas[i]["path"]``, ``["orig_size"]`` ``[h, w]`` and
    ``["size"]`` (the unpadded ``[h, w]`` inside the input).

    Model arguments go to ``build_deeplab``. ``eval_scales`` / ``eval_flip`` switch on
    multi-scale and mirrored inference in validate, test and predict (the paper's MF:
    ``eval_scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], eval_flip=True``). With
    ``prediction_dir`` set, predict also writes ``<image stem>.png`` VOC palette label maps and
    ``<image stem>_overlay.jpg``, the classes' colours blended over the image (for people).
    ``init_from`` names a checkpoint of this module whose model weights start training (the
    paper's COCO -> VOC fine-tuning); unlike ``ckpt_path`` it restores no optimizer or step.

    ``output_stride``, the evaluation options, ``prediction_dir`` and ``init_from`` are run-time
    choices, not saved as hyperparameters: the weights are the same at OS8 and OS16, and
    LightningCLI would otherwise let a checkpoint's saved values override the command line
    (an OS16 checkpoint evaluated with ``--model.output_stride 8`` would silently run at 16).
    ``load_from_checkpoint`` therefore builds OS16 unless given ``output_stride=8``.

    Optimizer steps with a non-finite loss are skipped, and training stops after
    ``max_nonfinite_steps`` of them in a row (the runtime: ``engine.TaskModule``).

    ``grad_checkpointing`` recomputes that many backbone blocks in the backward pass instead of
    keeping their activations (``build_deeplab``; default the backbone's, 3 for MobileNetV2;
    0 for the fastest step); ``channels_last`` keeps weights, hence
    activations, in NHWC order, which oneDNN and cuDNN run faster. ``freeze_backbone`` keeps
    the backbone's first layers fixed (``build_deeplab``).
    """

    RUN_TIME_OPTIONS = (*TaskModule.RUN_TIME_OPTIONS, "output_stride", "eval_scales", "eval_flip", "init_from")
    MONITOR = "mIoU"

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "mobilenet_v2",
        output_stride: int = 16,
        head: HeadName = "reduced",
        pretrained_backbone: bool | str = False,
        width_mult: float = 1.0,
        atrous_rates: list[int] | None = None,
        separable: bool = False,
        dropout: float = 0.1,
        lr: float = 0.007,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        poly_power: float = 0.9,
        schedule_interval: Literal["step", "epoch"] = "step",
        class_weights: list[float] | None = None,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        prediction_dir: str | None = None,
        init_from: str | None = None,
        max_nonfinite_steps: int = 5,
        grad_checkpointing: int | None = None,
        channels_last: bool = True,
        freeze_backbone: bool | str = False,
    ) -> None:
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        model = build_deeplab(
            num_classes, backbone, output_stride, head, pretrained_backbone, width_mult, atrous_rates, separable,
            dropout=dropout, grad_checkpointing=grad_checkpointing, freeze_backbone=freeze_backbone,
        )  # fmt: skip
        super().__init__(model, channels_last, max_nonfinite_steps, prediction_dir)
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        )
        self.eval_scales = tuple(eval_scales)
        self.eval_flip = eval_flip
        self.init_from = init_from

    def probabilities(self, images: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """``N x C x H x W`` class probabilities of ``model`` (default ``self.model``) with the
        configured scales and flip."""
        return multi_scale_flip_probabilities(
            self.model if model is None else model, images, scales=self.eval_scales, flip=self.eval_flip
        )

    # --- training ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Runs before Lightning restores a ``ckpt_path``, so resuming still wins.
        if stage == "fit" and self.init_from is not None:
            checkpoint = read_checkpoint(self.init_from)
            check_module_class(checkpoint, DeepLabModule, self.init_from)
            weights = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
            load_checked(self.model, weights, source=self.init_from)

    def training_losses(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, masks = batch
        return {"loss": self.loss(self.model(images), masks)}

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy of ``logits`` ``N x C x H x W`` against ``masks``
        ``N x H x W`` (int64 class ids, ``IGNORE_INDEX`` unlabelled), class-weighted if configured."""
        return F.cross_entropy(logits, masks, weight=self.class_weights, ignore_index=IGNORE_INDEX)

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        interval = self.hparams.schedule_interval
        total = self.total_steps(interval)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=self.hparams.poly_power)
        return {"scheduler": scheduler, "interval": interval}

    # --- validation and test -------------------------------------------------------------
    def make_metric(self) -> nn.Module:
        return nn.ModuleDict({"scores": SegmentationScores(self.hparams.num_classes), "loss": SetCrossEntropy()})

    def update_metric(self, metric: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> None:
        images, masks = batch
        probabilities = self.probabilities(images)
        masks = torch.where(keep.view(-1, 1, 1), masks, IGNORE_INDEX)
        metric["scores"].update(probabilities.argmax(dim=1), masks)
        metric["loss"].update(probabilities.clamp_min(1e-8).log(), masks, self.class_weights)

    def compute_metric(self, metric: nn.Module) -> dict[str, torch.Tensor]:
        result = metric["scores"].compute()
        values = {"loss": metric["loss"].compute(), "mIoU": result["miou"], "pixel_accuracy": result["pixel_accuracy"]}
        for name, iou in zip(self.class_names(), result["iou"]):
            if not iou.isnan():
                values[f"iou/{name}"] = iou
        return values

    # --- prediction ----------------------------------------------------------------------
    def predict_batch(self, model: nn.Module, images: torch.Tensor, metas: Sequence[dict]) -> list[dict[str, Any]]:
        """Per image: ``labels``, an int64 ``orig_h x orig_w`` label map."""
        probabilities = self.probabilities(images, model)
        results = []
        for probs, meta in zip(probabilities, metas):
            height, width = (int(v) for v in meta["size"])
            valid = probs[None, :, :height, :width]
            # max's indices are argmax's (the first maximum); on CPU its kernel reduces the class
            # dimension of an N x C x H x W map faster than argmax's
            labels = resize_bilinear(valid, [int(v) for v in meta["orig_size"]])[0].max(dim=0).indices
            results.append({"labels": labels})
        return results

    def write_prediction(self, result: dict[str, Any], meta: dict[str, Any], directory: Path) -> None:
        """``<stem>.png`` (VOC palette label map) and ``<stem>_overlay.jpg`` (classes blended over the image)."""
        stem = directory / Path(meta["path"]).stem
        save_palette_png(result["labels"], f"{stem}.png")
        save_picture(draw_label_map(meta["image"], result["labels"].cpu(), self.hparams.num_classes), f"{stem}_overlay.jpg")
