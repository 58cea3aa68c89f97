"""Run under ``torchrun --nproc-per-node 2`` by test_scale.py: each rank sets up training as
``train run`` does and writes the patch indices of its batches for 2 epochs to OUT.rank<r>.json."""

from __future__ import annotations

import json
import sys

import torch

from train import distributed
from train.experiment import load_experiment
from train.loop import set_up

if __name__ == "__main__":
    cfg_path, out = sys.argv[1], sys.argv[2]
    ranks, device = distributed.setup(torch.device("cpu"))
    dm, state = set_up(load_experiment(cfg_path), ranks, device)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        dm.set_epoch(epoch)
        epochs.append([[int(i) for i in b] for b in loader.batch_sampler])
    with open(f"{out}.rank{ranks.rank}.json", "w") as f:
        json.dump(
            {"world": ranks.world, "backend": torch.distributed.get_backend(), "epochs": epochs}, f
        )
    ranks.close()
