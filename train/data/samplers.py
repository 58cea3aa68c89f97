"""Samplers: a seeded shuffling sampler with epochs of any size, and P works x K versions batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices ``0..n-1`` shuffled by ``(seed, epoch)``; an epoch may be a fixed number of samples.

    With ``num_samples`` larger than ``n`` the permutation repeats (each index as evenly as
    possible); smaller, an epoch is a prefix of it. The same seed and epoch give the same
    order in any process, so 0 or N DataLoader workers see the same batches.

    ``blocks`` (a block id per index, e.g. :meth:`StoreDataset.patch_blocks`): shuffling by
    blocks, for data read from disk. Each epoch the blocks are shuffled and taken
    ``blocks_per_draw`` at a time, and the indices of the blocks of a draw are shuffled together:
    a stretch of the epoch reads from a few regions of the store instead of all of it, and a
    batch still mixes several. Under DDP each rank takes whole blocks (ranks then see unequal
    shares; the trainer joins them).
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        num_samples: int | None = None,
        with_epoch: bool = False,
        rank: int = 0,
        world: int = 1,
        global_batch: int | None = None,
        blocks: np.ndarray | None = None,
        blocks_per_draw: int = 8,
    ):
        self.n, self.shuffle, self.seed, self.with_epoch = n, shuffle, seed, with_epoch
        self.blocks_per_draw = max(1, int(blocks_per_draw))
        self._members: list[np.ndarray] | None = None
        self._spread = np.zeros(0, dtype=np.int64)
        if blocks is not None:
            blocks = np.asarray(blocks)
            if len(blocks) != n:
                raise ValueError(f"blocks gives {len(blocks)} block ids for {n} indices")
            self._spread = np.flatnonzero(blocks < 0)
            order = np.argsort(blocks, kind="stable")[len(self._spread) :]
            edges = np.flatnonzero(np.diff(blocks[order])) + 1
            self._members = np.split(order, edges) if len(order) else []
        self.num_samples = n if num_samples is None else int(num_samples)
        self.epoch, self.skip = 0, 0
        if world > 1 and blocks is None and (global_batch is None or global_batch % world):
            raise ValueError(
                f"the global batch ({global_batch}) must be a multiple of the {world} ranks"
            )
        self.rank, self.world, self.global_batch = rank, world, global_batch

    def set_epoch(self, epoch: int, skip: int | None = None) -> None:
        """Shuffle for ``epoch``; the next pass starts ``skip`` indices into it (where a
        training stopped in mid-epoch resumes: its first batches are not read again). Without
        ``skip`` (as Lightning calls it), a start set for this very epoch stays."""
        if skip is None:
            skip = self.skip if epoch == self.epoch else 0
        self.epoch, self.skip = epoch, skip

    def indices(self) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        reps = -(-self.num_samples // self.n)
        if self._members is not None and self.shuffle:
            if self.num_samples == self.n:  # every index once, this rank's blocks
                return self._by_blocks(rng)
            parts = [self._by_blocks(rng) for _ in range(reps + 1)]
            return np.concatenate(parts)[: -(-self.num_samples // self.world)]
        parts = [
            rng.permutation(self.n) if self.shuffle else np.arange(self.n) for _ in range(reps)
        ]
        order = np.concatenate(parts)[: self.num_samples]
        return self.shard(order) if self.world > 1 else order

    def _by_blocks(self, rng: np.random.Generator) -> np.ndarray:
        """One pass over this rank's blocks: draws of a few blocks, shuffled within a draw.
        Indices of block ``-1`` belong to none: they are shuffled over the whole pass, an equal
        share mixed into each draw."""
        members = self._members
        blocks = rng.permutation(len(members))[self.rank :: self.world]
        k = self.blocks_per_draw
        draws = [blocks[s : s + k] for s in range(0, len(blocks), k)]
        spread = (
            rng.permutation(self._spread)[self.rank :: self.world] if len(self._spread) else None
        )
        shares = np.array_split(spread, max(1, len(draws))) if spread is not None else None
        out = []
        for d in range(max(len(draws), 1 if shares else 0)):
            parts = [members[b] for b in draws[d]] if d < len(draws) else []
            if shares is not None:
                parts.append(shares[d])
            out.append(rng.permutation(np.concatenate(parts)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def shard(self, order: np.ndarray) -> np.ndarray:
        """This rank's slice of every global batch: rank r takes the r-th of ``world`` equal
        parts of each batch of ``global_batch`` indices (the last, partial batch split as evenly
        as it goes), so the ranks together see every index once and, batch by batch, exactly
        what one process with the global batch would."""
        G, W, r = self.global_batch, self.world, self.rank
        pieces = []
        for start in range(0, len(order), G):
            batch = order[start : start + G]
            edges = (
                np.linspace(0, len(batch), W + 1).round().astype(int)
                if len(batch) < G
                else np.arange(W + 1) * (G // W)
            )
            pieces.append(batch[edges[r] : edges[r + 1]])
        return np.concatenate(pieces) if pieces else order[:0]

    def __iter__(self) -> Iterator[int]:
        # with_epoch: (index, epoch) pairs, for datasets whose items draw at random per epoch
        # (persistent workers keep their own copy of the dataset, so its epoch travels with the index)
        order = self.indices()[self.skip :].tolist()
        if self.with_epoch:
            return iter([(i, self.epoch) for i in order])
        return iter(order)

    def __len__(self) -> int:  # a whole epoch's, also when resumed in mid-epoch (as Lightning
        return self.num_samples if self.world == 1 else len(self.indices())  # counts batches)


class WorkBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of ``P`` works x ``K`` versions for metric learning, over patch indices.

    Each batch takes ``P`` distinct works (among those with at least 2 files) and, per work,
    ``K`` patches from ``K`` distinct files when the work has them (with repetition otherwise),
    so every anchor has a positive in its batch.
    """

    def __init__(
        self,
        patch_file: np.ndarray,
        file_work: np.ndarray,
        works_per_batch: int,
        versions_per_work: int,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.P, self.K, self.seed, self.epoch = works_per_batch, versions_per_work, seed, 0
        self.rank, self.world = rank, world
        self.patch_file = np.asarray(patch_file)
        work_of_patch = np.asarray(file_work)[self.patch_file]
        self.by_work: dict[int, dict[int, np.ndarray]] = {}
        for w in np.unique(work_of_patch[work_of_patch >= 0]):
            patches = np.nonzero(work_of_patch == w)[0]
            files = np.unique(self.patch_file[patches])
            if len(files) >= 2:
                self.by_work[int(w)] = {
                    int(f): patches[self.patch_file[patches] == f] for f in files
                }
        self.works = np.array(sorted(self.by_work))
        if len(self.works) < 2:
            raise ValueError(
                f"need at least 2 works with 2+ files for metric learning, have {len(self.works)}"
            )
        self.P = min(self.P, len(self.works))
        if world > self.P:
            raise ValueError(f"{world} ranks need at least as many works per batch, have {self.P}")
        self.batches = batches_per_epoch or max(1, len(self.patch_file) // (self.P * self.K))
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int | None = None) -> None:
        """Draw the batches of ``epoch``; the next pass leaves out its first ``skip`` (kept,
        when not given, for this very epoch)."""
        if skip is None:
            skip = self.skip if epoch == self.epoch else 0
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[list[int]]:
        """Every rank draws the same global batches and keeps its share of their works
        (whole works: each anchor keeps its positives in its rank's batch)."""
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        edges = np.linspace(0, self.P, self.world + 1).round().astype(int)
        for b in range(self.batches):
            batch = []
            works = rng.choice(self.works, size=self.P, replace=False)
            for k, w in enumerate(works):
                files = np.array(sorted(self.by_work[int(w)]))
                chosen = rng.choice(files, size=self.K, replace=len(files) < self.K)
                picks = [int(rng.choice(self.by_work[int(w)][int(f)])) for f in chosen]
                if edges[self.rank] <= k < edges[self.rank + 1]:
                    batch += picks
            if b >= self.skip:  # skipped batches are drawn all the same: the draws that follow
                yield batch  # are the uninterrupted epoch's

    def __len__(self) -> int:
        return self.batches
