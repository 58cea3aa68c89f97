"""Trained patches per second from the store against the same training fed from RAM.

For each experiment and worker count, the same model (same seed, same initial weights) is
trained for a few epochs twice, in alternation: once from the experiment's own DataLoader
(StoreDataset over the store, its EpochSampler, its collate), once from a DataLoader over an
in-RAM ``TensorDataset`` holding exactly the training patches and targets, contiguous, with an
EpochSampler of the same seed, the same batch size and workers. The figure is the trainer's own
per-epoch throughput (steps, forward, backward, update: what a run reports), the first epoch of
each left out (start-up). The ratio store / in-RAM is printed per pair and as the median.

    make features && .venv/bin/python benchmarks/bench_train.py \
        [--config configs/experiments/demo_genre.yaml ...] [--workers 0 2] [--epochs 3] [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from train import distributed
from train.devices import pick_device
from train.experiment import load_experiment
from train.loop import set_up, train_epoch
from train.samplers import EpochSampler


def in_ram_loader(dm, workers: int) -> torch.utils.data.DataLoader:
    """The training split's patches, stacked once into RAM, behind a DataLoader like the store's."""
    ds = dm.train_ds
    X, Y = [], []
    for s in range(0, len(ds), 256):
        b = ds.batch(ds.patch_file[s : s + 256], ds.patch_start[s : s + 256])
        X.append(b["X"].contiguous().clone())
        Y.append(b["y"].clone())
    data = torch.utils.data.TensorDataset(torch.cat(X), torch.cat(Y))

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            x, y = data[i]
            return {"X": x, "y": y}

    sampler = EpochSampler(len(ds), shuffle=True, seed=dm.seed, num_samples=dm.samples_per_epoch)
    dm._samplers.append(sampler)
    extra = {"persistent_workers": True, "prefetch_factor": dm.prefetch_factor} if workers else {}
    return torch.utils.data.DataLoader(
        Items(), batch_size=dm.batch_size, sampler=sampler, num_workers=workers,
        drop_last=len(ds) > dm.batch_size, **extra,
    )  # fmt: skip


def throughput(cfg, workers: int, source: str, epochs: int) -> float:
    torch.manual_seed(cfg.train.seed)
    ranks, device = distributed.setup(pick_device("cpu"))
    dm, state = set_up(cfg, ranks, device)
    loader = dm.train_dataloader() if source == "store" else in_ram_loader(dm, workers)
    rates = []
    for epoch in range(epochs):
        dm.set_epoch(epoch)
        for s in dm._samplers:
            s.set_epoch(epoch)
        rates.append(train_epoch(state, loader, epoch, False)["samples_per_s"])
    return float(np.mean(rates[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config",
        nargs="+",
        default=["configs/experiments/demo_genre.yaml", "configs/experiments/demo_pitch.yaml"],
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    for path in args.config:
        for workers in args.workers:
            cfg = load_experiment(path, [f"train.num_workers={workers}", "train.device=cpu"])
            pairs = []
            for _ in range(args.pairs):
                s = throughput(cfg, workers, "store", args.epochs)
                r = throughput(cfg, workers, "ram", args.epochs)
                pairs.append((s, r))
            ratios = [s / r for s, r in pairs]
            print(f"{path} {workers} workers: store {statistics.median(p[0] for p in pairs):.0f} "
                  f"patches/s, in-RAM {statistics.median(p[1] for p in pairs):.0f}; pair ratios "
                  f"{', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}x",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
