"""Which recordings are versions of one work (cover-song identification): metric learning."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.config import ConfigError
from common.targets import TargetSpec

from ..metrics import file_average, retrieval_metrics
from .base import Task
from .registry import register


@register
class Work(Task):
    name = "work"
    kinds = ("work",)
    headline = ("MAP", "MRR", "P@1", "P@10", "mean_rank")

    per_class_outputs = False  # an embedding: any other dataset's works can be ranked

    def n_out(self, spec) -> int | None:
        """The classification head's classes (``train.classify``: every work of the target's
        vocabulary; those outside the training split are never a target), else none: the
        embedding is of the model's own size."""
        return len(spec.vocabulary) if self.cfg.classify else None

    def check_model(self, layers: set[str], file=None) -> None:
        head = "BNNeck" in layers
        if self.cfg.classify and not head:
            raise ConfigError(file, "train.classify", "needs a model whose last layer is "
                              "[BNNeck, {in_features: -1, classes: n_out}] (a class per work "
                              "of the target)")  # fmt: skip
        if head and not self.cfg.classify:
            raise ConfigError(file, "train.classify", "is 0, but the model ends in a BNNeck "
                              "classification head: set a weight (1.0) or drop the head")  # fmt: skip

    def loss(self, out, y: torch.Tensor) -> torch.Tensor:
        """Triplet loss on the embedding; with a classification head (training a model that
        ends in ``BNNeck``: ``(embedding, logits)``), cross entropy over the training works
        with label smoothing beside it, weighted by ``train.classify`` and ``train.triplet``."""
        c = self.cfg
        if not isinstance(out, tuple):  # evaluation, or no head
            return triplet_loss(out, y, margin=c.margin, mining=c.mining)
        emb, logits = out
        loss = c.classify * F.cross_entropy(
            logits.float(), y.long(), label_smoothing=c.label_smoothing
        )
        if c.triplet:
            loss = loss + c.triplet * triplet_loss(emb, y, margin=c.margin, mining=c.mining)
        return loss

    def file_windows(self, n_frames: int, feature) -> tuple[int, np.ndarray]:
        """With ``train.embed_whole``, the whole file as one window (a file shorter than a
        patch hop padded to it); else its patches."""
        if self.cfg.embed_whole:
            return max(n_frames, feature.patch_hop), np.zeros(1, np.int64)
        return super().file_windows(n_frames, feature)

    def split_loss(self, out, y, batch_losses) -> float:
        """Batch-hard triplet loss over the whole split, a chunk of anchors at a time."""
        return float(hard_triplet_loss_chunked(out.float(), y, self.cfg.margin))

    def patch_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, float]:
        ids, emb = file_average(F.normalize(res["out"], dim=1).numpy(), res["file"].numpy())
        _, first = np.unique(res["file"].numpy(), return_index=True)
        return {"MAP": retrieval_metrics(emb, res["y"].numpy()[first])["MAP"]}

    def test_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, Any]:
        return {}  # scored on whole files

    def file_output(self, out: torch.Tensor, starts, n_frames: int) -> np.ndarray:
        """The mean of the patch embeddings, unit length ``(D,)``."""
        return F.normalize(F.normalize(out.float(), dim=1).mean(0), dim=0).cpu().numpy()

    def file_metrics(self, outs, ds, files, **settings) -> dict:
        works = ds.file_targets[ds.target][files]
        return retrieval_metrics(np.stack(outs), works) | {"works": len(np.unique(works))}

    def file_rows(self, outs, ds, files, **settings) -> list[dict]:
        works = ds.file_targets[ds.target][files]
        emb = np.stack(outs)
        per = retrieval_metrics(emb, works, per_query=True)["per_query"]
        by_query = {q: (ap, r) for q, ap, r in zip(per["query"], per["AP"], per["rank"])}
        vocab = ds.spec.vocabulary
        nearest = _nearest_other(emb)
        rows = []
        for i in range(len(files)):
            ap, rank = by_query.get(i, (float("nan"), float("nan")))
            row = {"work": vocab[int(works[i])], "AP": round(ap, 4), "first_version_rank": rank}
            if nearest[i] >= 0:
                row["nearest"] = str(ds.tables.names[files[nearest[i]]])
            rows.append(row)
        return rows

    def prediction(self, out, spec, feature, where, settings) -> dict[str, Any]:
        path = where.with_name(where.name + ".npy")
        np.save(path, out)
        return {"embedding": str(path)}


def _nearest_other(emb: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each embedding, the index of the nearest other one (-1 when alone), a chunk of
    queries at a time."""
    e = torch.as_tensor(emb, dtype=torch.float32)
    out = np.full(len(e), -1, np.int64)
    for lo in range(0, len(e) if len(e) > 1 else 0, chunk):
        d = torch.cdist(e[lo : lo + chunk], e)
        d[torch.arange(len(d)), torch.arange(lo, lo + len(d))] = float("inf")
        out[lo : lo + len(d)] = d.argmin(1).numpy()
    return out


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(B, B)`` between rows, differentiable (no sqrt of 0)."""
    sq = (emb.unsqueeze(1) - emb.unsqueeze(0)).pow(2).sum(-1)
    return torch.sqrt(sq.clamp_min(1e-12)) * (sq > 0)


def mine_triplets(
    dist: torch.Tensor,
    labels: torch.Tensor,
    mining: str,
    margin: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchor, positive and negative indices, one triplet per anchor that has a positive.

    - ``random``: a random positive and a random negative;
    - ``semihard``: a random positive; the closest negative farther than it
      (``d(a,p) < d(a,n)``), else the farthest negative (FaceNet, Schroff et al. 2015);
    - ``hard``: the farthest positive and the closest negative (batch-hard, Hermans et al. 2017).

    All anchors at once, on the distances' device: no read-back per anchor.
    """
    if mining not in ("random", "semihard", "hard"):
        raise ValueError(f"mining must be random, semihard or hard, got {mining!r}")
    d = dist.detach()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    anchors = torch.nonzero(pos_mask.any(1) & neg_mask.any(1)).flatten()
    da, pm, nm = d[anchors], pos_mask[anchors], neg_mask[anchors]
    inf = torch.tensor(float("inf"), device=d.device)
    if mining == "hard":
        return anchors, torch.where(pm, da, -inf).argmax(1), torch.where(nm, da, inf).argmin(1)

    def draw(mask: torch.Tensor) -> torch.Tensor:  # a uniform choice among each row's True
        u = torch.rand(mask.shape, generator=generator).to(mask.device)
        return torch.where(mask, u, torch.tensor(-1.0, device=mask.device)).argmax(1)

    p = draw(pm)
    if mining == "random":
        return anchors, p, draw(nm)
    d_ap = da.gather(1, p[:, None])
    farther = nm & (da > d_ap)
    semi = torch.where(farther, da, inf).argmin(1)
    far = torch.where(nm, da, -inf).argmax(1)
    return anchors, p, torch.where(farther.any(1), semi, far)


def triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.3, mining: str = "semihard"
) -> torch.Tensor:
    """Mean of ``max(0, d(a,p) - d(a,n) + margin)`` over the mined triplets."""
    dist = pairwise_distances(emb.float())
    a, p, n = mine_triplets(dist, labels, mining, margin)
    if len(a) == 0:
        return emb.sum() * 0.0
    return F.relu(dist[a, p] - dist[a, n] + margin).mean()


def hard_triplet_loss_chunked(
    emb: torch.Tensor, labels: torch.Tensor, margin: float, chunk: int = 1024
) -> torch.Tensor:
    """Batch-hard triplet loss of every anchor against all others, ``chunk`` anchors at a time:
    memory O(chunk x N), never the (N, N, D) differences."""
    total, count = emb.new_zeros(()), 0
    inf = torch.tensor(float("inf"), device=emb.device)
    for lo in range(0, len(emb), chunk):
        idx = torch.arange(lo, min(len(emb), lo + chunk), device=emb.device)
        d = torch.cdist(emb[idx], emb)
        same = labels[idx][:, None] == labels[None, :]
        pos = same.clone()
        pos[torch.arange(len(idx)), idx] = False
        ok = pos.any(1) & (~same).any(1)
        hardest_pos = torch.where(pos, d, -inf).amax(1)
        hardest_neg = torch.where(~same, d, inf).amin(1)
        total = total + F.relu(hardest_pos - hardest_neg + margin)[ok].sum()
        count += int(ok.sum())
    return total / max(1, count)
