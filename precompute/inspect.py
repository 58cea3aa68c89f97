"""Look inside a store: what it holds, whether it is sound, and a picture of one file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.features import make_feature
from common.fileio import pread_into
from common.patches import patch_index
from common.store import (
    STATUS_OK,
    StoreError,
    StoreTables,
    frames_checksum,
    read_file_targets,
    read_frame_target,
    read_frames,
    read_runs,
    read_segment,
    read_tables,
    relative_to,
    segment_files,
    stores_root_of,
    target_rows,
    view_files,
)
from common.targets import MAX_RUN


def info(path: str | os.PathLike) -> dict[str, Any]:
    t = read_tables(path, missing_ok=True)
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
        "feature_mb": round(t.total_frames * t.frame_bytes / 2**20, 2),
        "segments": [relative_to(stores_root_of(path), s.path) for s in t.segments],
        "files_missing": len(t.missing),
        "feature": t.feature,
        "targets": {
            n: {"kind": s.kind, "classes": len(s.vocabulary) or len(s.pitch_midi) or None}
            for n, s in t.targets.items()
        },
        "failed": len(t.failed),
        "shorter_than_a_patch": _short_files(t, feature.patch_frames),
        "sample_rates": {
            int(sr): int(n) for sr, n in zip(*np.unique(t.orig_sr, return_counts=True))
        },
        "warnings": list(t.attrs.get("warnings") or []),
        "versions": t.attrs.get("versions"),
        "format_version": t.attrs.get("format_version"),
    }


def _short_files(t: StoreTables, patch_frames: int) -> dict[str, Any]:
    """Files with fewer frames than one patch (they have no patch to train on), counted, and
    per label of each class target."""
    short = t.n_frames < patch_frames
    out: dict[str, Any] = {"files": int(short.sum()), "patch_frames": patch_frames}
    if short.any():
        names = [n for n, s in t.targets.items() if s.kind == "class"]
        for name, labels in read_file_targets(t.path, names).items():
            vocab = t.targets[name].vocabulary
            values, counts = np.unique(labels[short], return_counts=True)
            out[name] = {vocab[v] if v >= 0 else "(none)": int(c) for v, c in zip(values, counts)}
    return out


def verify(path: str | os.PathLike) -> list[str]:
    """Every fault found in a view, or in every segment and view of a stores folder (empty:
    sound). Each file's rows are read and checked against their checksum, so a changed byte
    anywhere is found and named by its audio file."""
    path = Path(path)
    if path.is_dir():
        return verify_folder(path)
    faults: list[str] = []
    try:
        t = read_tables(path, missing_ok=True)
    except Exception as e:  # noqa: BLE001 - report, don't crash
        return [str(e)]
    if len(t.missing):
        faults.append(str(t.missing_error()))
    faults += _check_tables(t)
    missing = set(t.missing.tolist())
    for i in range(t.n_files):
        if i in missing:
            continue
        fault = check_rows(t, i)
        if fault:
            faults.append(f"{t.names[i]}: {fault}")
    return faults


def verified(path: str | os.PathLike) -> str:
    """What a clean :func:`verify` checked, in words."""
    path = Path(path)
    if path.is_dir():
        segs, views = segment_files(path), view_files(path)
        mb = sum(p.stat().st_size for p in segs) / 2**20
        return (f"{len(segs)} segment(s) ({mb:,.1f} MB): every file's rows match their "
                f"checksums; {len(views)} store(s): tables, targets and parameters consistent")  # fmt: skip
    t = read_tables(path, missing_ok=True)
    mb = t.total_frames * t.frame_bytes / 2**20
    return (f"{t.n_files} files ({mb:,.1f} MB of features in {len(t.segments)} segment(s)): "
            "their rows match their checksums, hold no NaN or Inf; tables, targets and "
            "parameters consistent")  # fmt: skip


def _check_tables(t) -> list[str]:
    faults = []
    feature = make_feature(t.feature)
    if t.dtype != np.dtype(feature.store_dtype).newbyteorder("<"):
        faults.append(f"features: dtype {t.dtype}, the parameters give {feature.store_dtype}")
    if tuple(t.frame_shape) != feature.frame_shape:
        faults.append(
            f"features: frame shape {t.frame_shape}, the parameters give {feature.frame_shape}"
        )
    if feature.key() != t.attrs.get("feature_key"):
        faults.append(
            "feature_key differs from the stored parameters and this machine's library versions"
        )
    expected_offset = np.concatenate([[0], np.cumsum(t.n_frames)[:-1]]) if t.n_files else t.offset
    if not np.array_equal(t.offset, expected_offset):
        faults.append("files: offsets are not the running sum of frame counts")
    if int(t.n_frames.sum()) != t.total_frames:
        faults.append(
            f"files: frame counts add to {int(t.n_frames.sum())}, features hold {t.total_frames}"
        )
    for s, f, n, name in zip(t.segment, t.first, t.n_frames, t.names):
        if f < 0 or n < 0 or f + n > t.segments[s].frames:
            faults.append(f"{name}: frames {f}-{f + n} are outside its segment")
    expected_frames = np.array([feature.n_frames(int(round(d * feature.sr))) for d in t.duration_s])
    off = np.nonzero(np.abs(expected_frames - t.n_frames) > 1)[0]
    if len(off):
        faults.append(
            f"files: {len(off)} file(s) whose frame count does not match their duration (first: {t.names[off[0]]})"
        )
    counts = target_rows(t.path)
    for name, spec in t.targets.items():
        rows = t.total_frames if spec.frame_level else t.n_files
        if counts[name] != rows:
            faults.append(f"target {name!r}: {counts[name]} rows, expected {rows}")
        elif spec.frame_level:
            faults += [f"target {name!r}: {f}" for f in _check_runs(t, spec)]
    return faults


def _check_runs(t: StoreTables, spec) -> list[str]:
    """A frame-level target's runs: sorted, inside the view's frames, within their bounds."""
    start, length, value = (np.asarray(c) for c in read_runs(t.path, spec.name))
    faults = []
    if (np.diff(start) < 0).any():
        faults.append("runs are not sorted by their first frame")
    if len(start) and (start.min() < 0 or (start + length).max() > t.total_frames):
        faults.append(f"runs outside the view's {t.total_frames} frames")
    if ((length < 1) | (length > MAX_RUN)).any():
        faults.append(f"runs of fewer than 1 or more than {MAX_RUN} frames")
    row_shape, _ = spec.row_layout()
    if value.dtype.kind == "i" and len(value):
        top = row_shape[0] if row_shape else len(spec.vocabulary)
        if value.min() < 0 or value.max() >= top:
            faults.append(f"values outside 0..{top - 1}")
    return faults


def check_rows(t, i: int, block_frames: int = 4096) -> str:
    """What is wrong with file ``i``'s rows ('' if nothing): checksum, NaN or Inf."""
    h = hashlib.blake2b(digest_size=16)
    bad = 0
    n = int(t.n_frames[i])
    for s in range(0, n, block_frames):
        block = read_frames(t, i, s, min(block_frames, n - s))
        h.update(memoryview(block).cast("B"))
        bad += int((~np.isfinite(block)).sum())
    path, at, nbytes = t.byte_range(i)
    where = f"{relative_to(stores_root_of(t.path), path)}, bytes {at}-{at + nbytes}"
    faults = []
    if h.hexdigest() != t.checksum[i]:
        faults.append("its rows differ from their checksum: the segment changed on disk")
    if bad:
        faults.append(f"{bad} NaN or Inf values")
    return f"{'; '.join(faults)} ({where})" if faults else ""


def verify_folder(root: Path) -> list[str]:
    """Every segment's rows against its table, then every view's tables."""
    faults = []
    names: dict[str, str] = {}
    sums: dict[Path, dict[int, str]] = {}
    views = view_files(root)
    for v in views:
        try:
            t = read_tables(v, missing_ok=True)
            names.update(zip(t.keys.tolist(), t.names.tolist()))
        except StoreError:
            continue
    for p in segment_files(root):
        try:
            seg = read_segment(p)
        except StoreError as e:
            faults.append(str(e))
            continue
        faults += [f"{relative_to(root, p)}: {f}" for f in _check_segment(seg, names)]
    for v in views:
        try:
            t = read_tables(v, missing_ok=True)
        except StoreError as e:
            faults.append(str(e))
            continue
        if len(t.missing):
            faults.append(str(t.missing_error()))
        faults += [f"{v}: {f}" for f in _check_tables(t)]
        missing = set(t.missing.tolist())
        for i in range(t.n_files):
            if i not in missing and t.checksum[i] != _segment_sum(t, i, sums):
                faults.append(f"{v}: {t.names[i]}: its checksum differs from its segment's")
    return faults


def _segment_sum(t, i: int, sums: dict[Path, dict[int, str]]) -> str:
    """The checksum a segment's table gives for file ``i``'s rows (``sums``: tables read)."""
    path = t.segments[int(t.segment[i])].path
    if path not in sums:
        try:
            seg = read_segment(path)
            sums[path] = dict(zip(seg.first.tolist(), seg.checksum.tolist()))
        except StoreError:
            sums[path] = {}
    return sums[path].get(int(t.first[i]), "")


def _check_segment(seg, names: dict[str, str]) -> list[str]:
    faults = []
    fd = os.open(seg.path, os.O_RDONLY)
    try:
        for r, (k, f, n, st, c) in enumerate(
            zip(seg.keys, seg.first, seg.n_frames, seg.status, seg.checksum)
        ):
            if st != STATUS_OK:
                continue
            at, nbytes = seg.byte_range(r)
            data = np.empty(nbytes, np.uint8)
            pread_into(fd, data, at)
            if frames_checksum(data) != c:
                who = names.get(str(k), f"content key {k}")
                faults.append(f"{who}: its rows differ from their checksum (frames {f}-{f + n})")
    finally:
        os.close(fd)
    return faults


def file_index(t: StoreTables, name: str) -> int:
    """The file of a view ``name`` designates: its filepath as in the pyjama, the end of its
    path (``it/p01.wav`` for ``../speech/it/p01.wav``, a path relative to the dataset's
    folder), its file name or its stem. Refused, with the candidates, when several match."""
    want = Path(name).as_posix().lstrip("./")
    names = [Path(str(n)).as_posix() for n in t.names]
    for match in (
        lambda n: n == want,
        lambda n: n.endswith("/" + want),
        lambda n: Path(n).name == want,
        lambda n: Path(n).stem == want,
    ):
        hits = [i for i, n in enumerate(names) if match(n)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            shown = ", ".join(names[i] for i in hits[:6]) + (" ..." if len(hits) > 6 else "")
            raise StoreError(f"{t.path}: {name!r} names {len(hits)} files ({shown}); give more "
                             "of its path")  # fmt: skip
    raise StoreError(f"{t.path}: no file {name!r} (first files: {', '.join(names[:5])})")


def show(
    path: str | os.PathLike, name: str, out: str | os.PathLike, channel: int | None = None
) -> Path:
    """Draw one file's feature with time and frequency axes, the patch grid and frame-level targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = read_tables(path)
    i = file_index(t, name)
    feature = make_feature(t.feature)
    n = int(t.n_frames[i])
    times = feature.frame_times(n)
    frame_targets = [s for s in t.targets.values() if s.frame_level]
    fig, axes = plt.subplots(
        1 + len(frame_targets), 1, figsize=(12, 3.2 * (1 + len(frame_targets))), squeeze=False
    )
    ax = axes[0, 0]
    _draw_feature(ax, feature, feature.patch_input(read_frames(t, i)), times, channel)
    _, starts = patch_index(np.array([n]), feature.patch_frames, feature.patch_hop)
    for s in starts:
        ax.axvline(times[s], color="cyan", lw=0.6, alpha=0.7)
    ax.set_title(
        f"{t.names[i]}: {feature.kind}, {n} frames, {len(starts)} patches of {feature.patch_frames} (cyan: starts)"
    )
    ax.set_xlabel("time (s)")
    for k, spec in enumerate(frame_targets, 1):
        on_feature = ax if feature.kind in ("cqt", "hcqt") and k == 1 else None
        _draw_target(axes[k, 0], spec, read_frame_target(t, spec.name, i), times, on_feature)
        axes[k, 0].set_xlim(ax.get_xlim())
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _extent(times: np.ndarray) -> tuple[float, float]:
    return (times[0], times[-1]) if len(times) else (0, 0)


def _draw_feature(ax, feature, block: np.ndarray, times: np.ndarray, channel: int | None) -> None:
    """The feature ``block`` (C, F, T), one channel (harmonic 1 by default), or the waveform."""
    if feature.kind == "waveform":
        ax.plot(np.arange(block.shape[1]) / feature.sr, block[0], lw=0.4)
        ax.set_ylabel("amplitude")
        return
    harmonics = list(feature.params.get("harmonics", []))
    c = channel if channel is not None else harmonics.index(1) if 1 in harmonics else 0
    img = block[c]
    if feature.kind in ("cqt", "hcqt"):
        lo, hi = feature.pitch_midi()[[0, -1]]
        ax.imshow(np.log1p(img), origin="lower", aspect="auto",
                  extent=(*_extent(times), lo, hi), cmap="magma")  # fmt: skip
        ax.set_ylabel("MIDI pitch (CQT bins)")
    else:
        ax.imshow(img, origin="lower", aspect="auto",
                  extent=(*_extent(times), 0, img.shape[0]), cmap="magma")  # fmt: skip
        ax.set_ylabel("mel band")


def _draw_target(tax, spec, arr: np.ndarray, times: np.ndarray, on_feature=None) -> None:
    """A frame-level target's rows ``arr`` over ``times``; pitches also over the feature."""
    if spec.kind == "frame_pitch":
        # markers, not an image: a one-bin row is thinner than a pixel and would vanish
        grid = np.asarray(spec.pitch_midi)
        fr, bins = np.nonzero(arr)
        tax.scatter(times[fr], grid[bins], s=2, marker="s", c="k", lw=0)
        tax.set_ylim(grid[0], grid[-1])
        tax.set_ylabel("MIDI pitch")
        if on_feature is not None:
            on_feature.scatter(times[fr], grid[bins], s=1, c="lime", alpha=0.5, lw=0)
    elif spec.kind == "frame_class":
        tax.step(times, arr, where="mid")
        tax.set_yticks(range(len(spec.vocabulary)), spec.vocabulary, fontsize=6)
    else:
        tax.imshow(np.nan_to_num(arr.astype(np.float32)).T, origin="lower", aspect="auto",
                   extent=(*_extent(times), 0, arr.shape[1]), interpolation="nearest")  # fmt: skip
    tax.set_title(f"target '{spec.name}' ({spec.kind})")
