"""Run under ``torchrun --nproc-per-node 2`` by test_scale.py: ``ddp_batches.py OUT CONFIG...``.
For each experiment in turn, each rank sets up training as ``train run`` does and writes the
patch indices of its batches for 2 epochs to OUT.<k>.rank<r>.json for the k-th experiment (one
launch for several experiments: the processes and their imports are paid once)."""

from __future__ import annotations

import json
import sys

import torch

from train import distributed
from train.experiment import load_experiment
from train.loop import set_up

if __name__ == "__main__":
    out = sys.argv[1]
    ranks, device = distributed.setup(torch.device("cpu"))
    for k, cfg_path in enumerate(sys.argv[2:]):
        dm, state = set_up(load_experiment(cfg_path), ranks, device)
        loader = dm.train_dataloader()
        epochs = []
        for epoch in range(2):
            dm.set_epoch(epoch)
            epochs.append([[int(i) for i in b] for b in loader.batch_sampler])
        with open(f"{out}.{k}.rank{ranks.rank}.json", "w") as f:
            backend = torch.distributed.get_backend()
            json.dump({"world": ranks.world, "backend": backend, "epochs": epochs}, f)
    ranks.close()
