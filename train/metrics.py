"""The metrics researchers report, as pure functions on arrays.

Labels reaching these functions are real labels: files without one are in no split
(:class:`train.data.StoreDataset`), so no ``-1`` is ever counted as a class or a work.
"""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(probs: np.ndarray, y: np.ndarray, vocabulary: list[str]) -> dict:
    """Accuracy, macro recall over the classes present, and the confusion matrix (rows: true)."""
    y = np.asarray(y, dtype=np.int64)
    if (y < 0).any():
        raise ValueError("classification_metrics: labels must be >= 0 (an unlabelled file got in)")
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
    """ROC-AUC and PR-AUC, macro over the labels that have both classes present."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y)
    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))
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


def retrieval_metrics(
    emb: np.ndarray, works: np.ndarray, chunk: int = 256, per_query: bool = False
) -> dict:
    """Each file queries all others by Euclidean distance; relevant = same work.

    MAP (mean average precision), MRR and mean rank of the first relevant item, precision
    at 1 and at 10. Queries without another version are left out; ties rank by file order.
    Distances are computed ``chunk`` queries at a time (``torch.cdist``), and nothing is
    sorted: the rank of each relevant file is the number of files nearer the query. Memory
    grows with N, not N², and time with N² times the versions per work, not N² log N.
    """
    emb_t = torch.as_tensor(np.asarray(emb, dtype=np.float32))
    works_t = torch.as_tensor(np.asarray(works, dtype=np.int64))
    n = len(works_t)
    idx = torch.arange(n)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("q", "ap", "rr", "rank", "p1", "p10")}
    for lo in range(0, n, chunk):
        q = torch.arange(lo, min(n, lo + chunk))
        rel = works_t[None, :] == works_t[q][:, None]
        rel[torch.arange(len(q)), q] = False
        has = rel.any(1)
        q, rel = q[has], rel[has]
        if not len(q):
            continue
        d = torch.cdist(emb_t[q], emb_t)
        d[torch.arange(len(q)), q] = float("inf")  # the query itself comes last
        n_rel = rel.sum(1)
        # the relevant files of each query, nearest first (padded with +inf past n_rel)
        rd, ri = torch.topk(torch.where(rel, d, torch.inf), int(n_rel.max()), 1, largest=False)
        ranks = torch.empty(rd.shape, dtype=torch.float64)
        for j in range(rd.shape[1]):
            dj, ij = rd[:, j : j + 1], ri[:, j : j + 1]
            before = (d < dj) | ((d == dj) & (idx[None, :] < ij))
            ranks[:, j] = before.sum(1).double() + 1
        valid = torch.arange(rd.shape[1])[None, :] < n_rel[:, None]
        # equal distances may come out of topk in any order: the ranks, ascending
        ranks = torch.where(valid, ranks, torch.inf).sort(1).values
        hits_at = torch.arange(1, rd.shape[1] + 1, dtype=torch.float64)[None, :]
        out["q"].append(q.double())
        out["ap"].append(torch.where(valid, hits_at / ranks, 0).sum(1) / n_rel)
        out["rr"].append(1.0 / ranks[:, 0])
        out["rank"].append(ranks[:, 0])
        out["p1"].append((ranks[:, 0] == 1).double())
        out["p10"].append(((ranks <= 10) & valid).sum(1).double() / min(10, n - 1))
    v = {k: torch.cat(x) if x else torch.zeros(0, dtype=torch.float64) for k, x in out.items()}
    res = {  # no work with two versions: NaN, as the mean of nothing
        "MAP": float(v["ap"].mean()),
        "MRR": float(v["rr"].mean()),
        "P@1": float(v["p1"].mean()),
        "P@10": float(v["p10"].mean()),
        "mean_rank": float(v["rank"].mean()),
        "queries": len(v["ap"]),
    }
    if per_query:  # the query (a file's index), its average precision and first relevant rank
        res["per_query"] = {"query": v["q"].long().tolist(), "AP": v["ap"].tolist(),
                            "rank": v["rank"].tolist()}  # fmt: skip
    return res
