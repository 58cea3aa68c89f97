"""Look inside a store: what it holds, whether it is sound, and a picture of one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.features import make_feature
from common.store import (
    STATUS_FAILED,
    STATUS_OK,
    StoreTables,
    dataset_layouts,
    iter_feature_blocks,
    memmap_dataset,
    patch_index,
    read_tables,
)


def info(path: str | os.PathLike) -> dict[str, Any]:
    t = read_tables(path)
    feature = make_feature(t.feature)
    pf, _ = patch_index(t.n_frames, feature.patch_frames, feature.patch_hop)
    return {
        "store": str(t.path),
        "dataset": t.attrs.get("dataset"),
        "pyjama": t.attrs.get("pyjama"),
        "files": t.n_files,
        "frames": t.total_frames,
        "patches": len(pf),
        "patch_frames": feature.patch_frames,
        "patch_hop": feature.patch_hop,
        "frame_shape": list(t.frame_shape),
        "dtype": str(t.dtype),
        "audio_hours": round(float(t.duration_s.sum()) / 3600, 4),
        "size_mb": round(Path(path).stat().st_size / 2**20, 2),
        "feature": t.feature,
        "targets": {
            n: {"kind": s.kind, "classes": len(s.vocabulary) or len(s.pitch_midi) or None}
            for n, s in t.targets.items()
        },
        "failed": len(t.failed),
        "versions": t.attrs.get("versions"),
        "format_version": t.attrs.get("format_version"),
    }


def verify(path: str | os.PathLike) -> list[str]:
    """Every fault found in the store (empty list: sound)."""
    faults: list[str] = []
    try:
        t = read_tables(path)
    except Exception as e:  # noqa: BLE001 - report, don't crash
        return [str(e)]
    layouts = dataset_layouts(path)
    feats = layouts["features"]
    if feats["chunks"] is not None or feats["compression"] is not None:
        faults.append("features: chunked or compressed (cannot be memory-mapped)")
    feature = make_feature(t.feature)
    if np.dtype(feats["dtype"]) != np.dtype(feature.store_dtype).newbyteorder("<"):
        faults.append(
            f"features: dtype {feats['dtype']}, the parameters give {feature.store_dtype}"
        )
    if tuple(feats["shape"][1:]) != feature.frame_shape:
        faults.append(
            f"features: frame shape {feats['shape'][1:]}, the parameters give {feature.frame_shape}"
        )
    if feature.key() != t.attrs.get("feature_key"):
        faults.append(
            "feature_key differs from the stored parameters and this machine's library versions"
        )
    with h5py.File(path, "r") as h:
        every_n = h["files/n_frames"][()]
        every_offset = h["files/offset"][()]
        status = h["files/status"][()]
    expected_offset = np.concatenate([[0], np.cumsum(every_n)[:-1]]) if len(every_n) else every_n
    if not np.array_equal(every_offset, expected_offset):
        faults.append("files: offsets are not the running sum of frame counts")
    if int(every_n.sum()) != t.total_frames:
        faults.append(
            f"files: frame counts add to {int(every_n.sum())}, features hold {t.total_frames}"
        )
    if (every_n < 0).any():
        faults.append("files: negative frame count")
    if not np.isin(status, (STATUS_OK, STATUS_FAILED)).all():
        faults.append("files: some files were never computed (an unfinished store)")
    expected_frames = np.array([feature.n_frames(int(round(d * feature.sr))) for d in t.duration_s])
    off = np.nonzero(np.abs(expected_frames - t.n_frames) > 1)[0]
    if len(off):
        faults.append(
            f"files: {len(off)} file(s) whose frame count does not match their duration (first: {t.names[off[0]]})"
        )
    for name, spec in t.targets.items():
        shape = layouts[f"targets/{name}"]["shape"]
        rows = t.total_frames if spec.frame_level else len(every_n)
        if shape[0] != rows:
            faults.append(f"targets/{name}: {shape[0]} rows, expected {rows}")
    bad = 0
    for block in iter_feature_blocks(path):
        bad += int((~np.isfinite(block)).sum())
    if bad:
        faults.append(f"features: {bad} NaN or Inf values")
    return faults


def _file_index(t: StoreTables, name: str) -> int:
    hits = [
        i
        for i, n in enumerate(t.names)
        if n == name or Path(n).name == name or Path(n).stem == name
    ]
    if not hits:
        raise KeyError(
            f"{t.path}: no file {name!r} (first files: {', '.join(map(str, t.names[:5]))})"
        )
    return hits[0]


def show(
    path: str | os.PathLike, name: str, out: str | os.PathLike, channel: int | None = None
) -> Path:
    """Draw one file's feature with time and frequency axes, the patch grid and frame-level targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = read_tables(path)
    i = _file_index(t, name)
    feature = make_feature(t.feature)
    feats = memmap_dataset(path, "features")
    off, n = int(t.offset[i]), int(t.n_frames[i])
    block = feature.patch_view(np.asarray(feats[off : off + n]))  # (C, F, T) or (1, samples)
    times = feature.frame_times(n)
    frame_targets = [s for s in t.targets.values() if s.frame_level]
    fig, axes = plt.subplots(
        1 + len(frame_targets), 1, figsize=(12, 3.2 * (1 + len(frame_targets))), squeeze=False
    )
    ax = axes[0, 0]
    extent_t = (times[0], times[-1]) if n else (0, 0)
    if feature.kind == "waveform":
        ax.plot(np.arange(block.shape[1]) / feature.sr, block[0], lw=0.4)
        ax.set_ylabel("amplitude")
    else:
        c = (
            channel
            if channel is not None
            else (
                list(feature.params.get("harmonics", [1])).index(1)
                if "harmonics" in feature.params and 1 in feature.params["harmonics"]
                else 0
            )
        )
        img = block[c]
        if feature.kind in ("cqt", "hcqt"):
            lo, hi = feature.pitch_midi()[[0, -1]]
            ax.imshow(
                np.log1p(img),
                origin="lower",
                aspect="auto",
                extent=(*extent_t, lo, hi),
                cmap="magma",
            )
            ax.set_ylabel("MIDI pitch (CQT bins)")
        else:
            ax.imshow(
                img,
                origin="lower",
                aspect="auto",
                extent=(*extent_t, 0, img.shape[0]),
                cmap="magma",
            )
            ax.set_ylabel("mel band")
    _, starts = patch_index(np.array([n]), feature.patch_frames, feature.patch_hop)
    for s in starts:
        ax.axvline(times[s], color="cyan", lw=0.6, alpha=0.7)
    ax.set_title(
        f"{t.names[i]}: {feature.kind}, {n} frames, {len(starts)} patches of {feature.patch_frames} (cyan: starts)"
    )
    ax.set_xlabel("time (s)")
    for k, spec in enumerate(frame_targets, 1):
        tax = axes[k, 0]
        arr = np.asarray(memmap_dataset(path, f"targets/{spec.name}")[off : off + n])
        if spec.kind == "frame_pitch":
            # markers, not an image: a one-bin row is thinner than a pixel and would vanish
            grid = np.asarray(spec.pitch_midi)
            fr, bins = np.nonzero(arr)
            tax.scatter(times[fr], grid[bins], s=2, marker="s", c="k", lw=0)
            tax.set_ylim(grid[0], grid[-1])
            tax.set_ylabel("MIDI pitch")
            if feature.kind in ("cqt", "hcqt") and k == 1:
                ax.scatter(times[fr], grid[bins], s=1, c="lime", alpha=0.5, lw=0)
        elif spec.kind == "frame_class":
            tax.step(times, arr, where="mid")
            tax.set_yticks(range(len(spec.vocabulary)), spec.vocabulary, fontsize=6)
        else:
            tax.imshow(
                np.nan_to_num(arr.astype(np.float32)).T,
                origin="lower",
                aspect="auto",
                extent=(*extent_t, 0, arr.shape[1]),
                interpolation="nearest",
            )
        tax.set_title(f"target '{spec.name}' ({spec.kind})")
        tax.set_xlim(ax.get_xlim())
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
