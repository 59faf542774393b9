"""Run by ``test_nonfinite.py`` as ``python tests/nonfinite_ddp.py OUT_DIR``: DeepLab under DDP
on 2 CPU processes (Lightning's launcher starts rank 1 by running this file again), where rank 1
alone has a NaN loss with finite gradients at global steps 1 and 3, then from step 5 on.

Only the loss shows the problem there, so unless the skip decision is shared the ranks would
step differently. Each rank writes ``OUT_DIR/rank<r>.json``: the steps it skipped, a checksum of
its weights after every step, and the message training stopped with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine.nonfinite import NonFiniteGuard, NonFiniteTrainingError
from deeplab_mobile import DeepLabModule

NAN_ON_RANK_1 = {1, 3}
NAN_ON_RANK_1_FROM = 5


class NaNLossOnRank1(DeepLabModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        step = self.global_step
        if self.global_rank == 1 and (step in NAN_ON_RANK_1 or step >= NAN_ON_RANK_1_FROM):
            loss = loss + loss.detach() * float("nan")  # the value is NaN, the gradients are not
        return loss


class WeightChecksums(L.Callback):
    def __init__(self) -> None:
        self.after_step: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step[trainer.global_step] = sum(float(p.detach().double().sum()) for p in pl_module.parameters())


def main(out_dir: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(32, 3, 64, 64), torch.randint(0, 3, (32, 64, 64)))
    module = NaNLossOnRank1(num_classes=3, width_mult=0.35, max_nonfinite_steps=2)
    checksums = WeightChecksums()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=10, callbacks=[checksums], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    try:
        trainer.fit(module, DataLoader(data, batch_size=2))
        stopped = None
    except NonFiniteTrainingError as err:
        stopped = str(err)
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    record = {"skipped": guard.skipped_steps, "checksums": checksums.after_step, "stopped": stopped}
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():  # not left to interpreter exit, where gloo can abort
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
