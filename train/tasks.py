"""Tasks: the loss and the metrics researchers report, for each kind of target.

| task        | target kind      | loss                         | metrics                                           |
| ----------- | ---------------- | ---------------------------- | ------------------------------------------------- |
| multiclass  | class            | cross-entropy                | accuracy, macro recall, confusion; file level too |
| multilabel  | multilabel       | BCE with logits              | ROC-AUC and PR-AUC, macro                          |
| multipitch  | frame_pitch      | BCE per bin and frame        | mir_eval.multipitch P/R/Acc, threshold from valid  |
| work        | work             | triplet, online mining       | MAP, MRR, P@1, P@10, mean rank on file embeddings  |
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("multiclass", "multilabel", "multipitch", "work")
TASK_OF_KIND = {
    "class": "multiclass",
    "multilabel": "multilabel",
    "frame_pitch": "multipitch",
    "work": "work",
}


# ---------------------------------------------------------------------------
# losses


def multiclass_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; ``y`` class indices as stored (int32), widened here, on the device."""
    return F.cross_entropy(logits.float(), y.long())


def multilabel_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), y.float())


multipitch_loss = multilabel_loss  # per bin and frame; logits and targets (B, bins, L)


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
    """
    d = dist.detach()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    anchors = torch.nonzero(pos_mask.any(1) & neg_mask.any(1)).flatten()
    if mining not in ("random", "semihard", "hard"):
        raise ValueError(f"mining must be random, semihard or hard, got {mining!r}")
    pos, neg = [], []
    for a in anchors.tolist():
        p_idx, n_idx = torch.nonzero(pos_mask[a]).flatten(), torch.nonzero(neg_mask[a]).flatten()
        if mining == "hard":
            p = p_idx[d[a, p_idx].argmax()]
            n = n_idx[d[a, n_idx].argmin()]
        else:
            p = p_idx[torch.randint(len(p_idx), (1,), generator=generator, device="cpu").item()]
            if mining == "random":
                n = n_idx[torch.randint(len(n_idx), (1,), generator=generator, device="cpu").item()]
            else:
                farther = n_idx[d[a, n_idx] > d[a, p]]
                n = farther[d[a, farther].argmin()] if len(farther) else n_idx[d[a, n_idx].argmax()]
        pos.append(int(p))
        neg.append(int(n))
    dev = labels.device
    return (
        anchors,
        torch.tensor(pos, dtype=torch.long, device=dev),
        torch.tensor(neg, dtype=torch.long, device=dev),
    )


def triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.3, mining: str = "semihard"
) -> torch.Tensor:
    """Mean of ``max(0, d(a,p) - d(a,n) + margin)`` over the mined triplets."""
    dist = pairwise_distances(emb.float())
    a, p, n = mine_triplets(dist, labels, mining, margin)
    if len(a) == 0:
        return emb.sum() * 0.0
    return F.relu(dist[a, p] - dist[a, n] + margin).mean()


# ---------------------------------------------------------------------------
# metrics


def classification_metrics(probs: np.ndarray, y: np.ndarray, vocabulary: list[str]) -> dict:
    pred = probs.argmax(1)
    k = len(vocabulary)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    present = cm.sum(1) > 0
    recall = np.diag(cm)[present] / cm.sum(1)[present]
    return {
        "accuracy": float((pred == y).mean()),
        "macro_recall": float(recall.mean()),
        "confusion": cm.tolist(),
    }


def file_average(values: np.ndarray, files: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of patch-level rows per file: ``(file ids, (n_files, ...))``."""
    ids, inv = np.unique(files, return_inverse=True)
    sums = np.zeros((len(ids), *values.shape[1:]), dtype=np.float64)
    np.add.at(sums, inv, values)
    return ids, sums / np.bincount(inv)[:, None]


def multilabel_metrics(scores: np.ndarray, y: np.ndarray, vocabulary: list[str]) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))  # labels with both classes present
    if not keep.any():
        return {"roc_auc_macro": float("nan"), "pr_auc_macro": float("nan"), "labels_scored": 0}
    return {
        "roc_auc_macro": float(roc_auc_score(y[:, keep], scores[:, keep], average="macro")),
        "pr_auc_macro": float(
            average_precision_score(y[:, keep], scores[:, keep], average="macro")
        ),
        "labels_scored": int(keep.sum()),
        "per_label_roc_auc": {
            vocabulary[i]: float(roc_auc_score(y[:, i], scores[:, i])) for i in np.nonzero(keep)[0]
        },
    }


def roll_to_freqs(roll: np.ndarray, pitch_midi: np.ndarray) -> list[np.ndarray]:
    """Active bins of a ``(bins, T)`` roll -> per-frame arrays of frequencies in Hz (for mir_eval)."""
    hz = 440.0 * 2 ** ((np.asarray(pitch_midi) - 69) / 12)
    return [hz[np.nonzero(col)[0]] for col in roll.T]


def multipitch_metrics(
    salience: list[np.ndarray],
    truth: list[np.ndarray],
    pitch_midi: np.ndarray,
    frame_s: float,
    threshold: float,
) -> dict:
    """mir_eval.multipitch over whole files (frames concatenated): precision, recall, accuracy."""
    import mir_eval

    est, ref = [], []
    for s, t in zip(salience, truth):
        est += roll_to_freqs(s >= threshold, pitch_midi)
        ref += roll_to_freqs(t > 0, pitch_midi)
    times = np.arange(len(ref)) * frame_s
    scores = mir_eval.multipitch.evaluate(times, ref, times, est)
    return {
        "precision": float(scores["Precision"]),
        "recall": float(scores["Recall"]),
        "accuracy": float(scores["Accuracy"]),
        "threshold": float(threshold),
    }


def best_threshold(salience: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """The threshold with the best frame-level F-measure on (validation) files."""
    s = np.concatenate([x.ravel() for x in salience])
    t = np.concatenate([x.ravel() > 0 for x in truth])
    best, best_f = 0.5, -1.0
    for th in np.linspace(0.05, 0.95, 19):
        p = s >= th
        tp = float((p & t).sum())
        f = 2 * tp / max(1.0, float(p.sum() + t.sum()))
        if f > best_f:
            best, best_f = float(th), f
    return best


def retrieval_metrics(emb: np.ndarray, works: np.ndarray) -> dict:
    """Each file queries all others by Euclidean distance; relevant = same work.

    MAP (mean average precision), MRR and mean rank of the first relevant item,
    precision at 1 and at 10. Queries without another version are left out.
    """
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    n = len(works)
    aps, rr, ranks, p1, p10 = [], [], [], [], []
    for q in range(n):
        rel = works == works[q]
        rel[q] = False
        if not rel.any():
            continue
        order = np.argsort(d[q], kind="stable")
        order = order[order != q]
        hits = rel[order]
        positions = np.nonzero(hits)[0] + 1
        aps.append(float(np.mean(np.arange(1, len(positions) + 1) / positions)))
        rr.append(1.0 / positions[0])
        ranks.append(float(positions[0]))
        p1.append(float(hits[0]))
        p10.append(float(hits[:10].mean()))
    return {
        "MAP": float(np.mean(aps)),
        "MRR": float(np.mean(rr)),
        "P@1": float(np.mean(p1)),
        "P@10": float(np.mean(p10)),
        "mean_rank": float(np.mean(ranks)),
        "queries": len(aps),
    }
