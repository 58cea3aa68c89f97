"""Run by test_lightning.py as a script (Lightning's DDP starts the second rank by running it
again): ``lightning_ddp.py OUT CONFIG...``. For each experiment in turn, 2 CPU ranks (gloo) train
it for 2 epochs under Lightning; each rank writes what its batches held, step by step, to
OUT.<k>.rank<r>.json for the k-th experiment (a hash per patch, and the batch's targets). One
launch for several experiments: the processes and their imports are paid once."""

from __future__ import annotations

import hashlib
import json
import sys

import lightning as L

from train.lightning import MirpatchDataModule, MirpatchModule


class Record(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        X = batch["X"].contiguous().numpy()
        self.steps.append({
            "epoch": trainer.current_epoch,
            "patches": [hashlib.blake2b(x.tobytes(), digest_size=8).hexdigest() for x in X],
            "y": batch["y"].flatten().tolist() if batch["y"].dim() == 1 else [],
        })  # fmt: skip


if __name__ == "__main__":
    out = sys.argv[1]
    for k, cfg_path in enumerate(sys.argv[2:]):
        data = MirpatchDataModule(cfg_path)
        record = Record()
        trainer = L.Trainer(
            max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
            use_distributed_sampler=False, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, limit_val_batches=0, callbacks=[record],
        )  # fmt: skip
        trainer.fit(MirpatchModule(data), datamodule=data)
        with open(f"{out}.{k}.rank{trainer.global_rank}.json", "w") as f:
            json.dump({"world": trainer.world_size, "steps": record.steps}, f)
