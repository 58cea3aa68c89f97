"""``train predict``: a run's best model on new audio files, the feature computed as precompute
computed it (same parameters, same code)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.audio import AudioError, load_audio
from common.features import make_feature
from common.targets import TargetSpec

from .checkpoints import load_run
from .devices import amp_settings, pick_device
from .evaluate import file_output
from .experiment import reload_resolved
from .tasks import task_for


def output_stems(paths: list[str | Path]) -> list[str]:
    """A name per input for the files written about it: the whole file name but its last
    suffix (``bwv10.7.wav`` -> ``bwv10.7``), with as many parent folders as it takes to keep
    two inputs apart (``a/x.wav``, ``b/x.wav`` -> ``a_x``, ``b_x``)."""
    parts = [Path(p).absolute().with_suffix("").parts for p in paths]
    depth = 1
    while True:
        names = ["_".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def predict_audio(
    folder: str | Path,
    audio: list[str | Path],
    out_dir: str | Path | None = None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Per-file results of a run's best model on audio files (``output``: the raw output);
    a file that cannot be decoded gets ``error`` (the reason, naming it) instead."""
    device = device or pick_device("auto")
    model, ck = load_run(folder, "best", device)
    feature = make_feature(ck["feature"])
    cfg = reload_resolved(ck["config"])
    spec = TargetSpec.from_attrs(ck["target"]["name"], ck["target"])
    task = task_for(cfg.target.task, spec, cfg.train)
    amp = amp_settings(device, cfg.train.amp)
    out_dir = Path(out_dir or Path(folder) / "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    mpath = Path(folder) / "metrics_test.json"
    settings = (
        {k: v for k, v in json.loads(mpath.read_text()).items() if k == "threshold"}
        if mpath.exists()
        else {}
    )
    results = []
    for path, stem in zip(audio, output_stems(audio)):
        try:
            a = load_audio(path, sr=feature.sr)
        except AudioError as e:  # one unreadable file does not cost the others
            results.append({"file": str(path), "error": str(e)})
            continue
        block = feature.compute(a.y).transpose(2, 0, 1)
        out = file_output(model, block, feature, task, device, amp)
        r: dict[str, Any] = {"file": str(path), "duration_s": round(a.duration_s, 3)}
        r |= task.prediction(out, spec, feature, out_dir / stem, settings)
        r["output"] = np.asarray(out)
        results.append(r)
    write_csv(out_dir / "predictions.csv", results)
    return results


def write_csv(path: Path, results: list[dict[str, Any]]) -> Path:
    """A row per file of what ``train predict`` says of it (labels and the best score, the
    notes' files, the embedding's file), or why it could not be read."""
    rows = []
    for r in results:
        row = {k: v for k, v in r.items() if k not in ("output", "scores")}
        if r.get("scores"):
            label, score = next(iter(r["scores"].items()))
            row |= {"top": label, "score": score}
        rows.append(
            {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
        )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    return path
