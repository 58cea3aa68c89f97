"""What a learned cover-song model must beat: a score that needs no training.

The 2D Fourier transform magnitude of beat-synchronous chroma (Bertin-Mahieux & Ellis 2011,
"Large-scale cover song recognition using the 2D Fourier transform magnitude"): per file,

1. chroma from the store's CQT (the octaves folded onto 12 pitch classes), each frame scaled to
   a peak of 1;
2. beats tracked on the CQT's onset strength (librosa), the chroma's median per beat: a tempo
   change moves no pattern;
3. the 2D FFT magnitude of every window of :data:`WINDOW` beats (the magnitude is the same for
   every circular shift of the 12 pitch classes, so for every key, and for every shift in
   time), then the median over windows; raised to a power and scaled to unit length.

Files are ranked by the Euclidean distance of these vectors, on exactly the files that
``train run`` tests on (its split or each of its folds), or on every file of another dataset.
"""

from __future__ import annotations

import numpy as np

from .data import StoreDataset
from .metrics import retrieval_metrics

WINDOW = 32  # beats per 2D FFT window (files with fewer beats: zero-padded to it)
POWER = 0.5


def chroma_of_cqt(cqt: np.ndarray, bins_per_octave: int) -> np.ndarray:
    """``(12, T)`` chroma of a CQT magnitude ``(T, F)`` whose bin 0 is a C: each semitone's
    bins (centred on it) summed over every octave, each frame scaled to a peak of 1."""
    per = bins_per_octave // 12
    F = cqt.shape[1] - cqt.shape[1] % bins_per_octave
    c = cqt[:, :F].reshape(len(cqt), -1, bins_per_octave).sum(1)  # (T, bpo)
    c = np.roll(c, per // 2, axis=1).reshape(len(cqt), 12, per).sum(2).T
    return c / np.maximum(c.max(0, keepdims=True), 1e-9)


def beat_chroma(cqt: np.ndarray, feature) -> np.ndarray:
    """``(12, beats)``: the chroma's median over each beat (librosa's tracker on the CQT's
    onset strength); the frames themselves when no beat is found."""
    import librosa

    chroma = chroma_of_cqt(cqt, feature.params["bins_per_octave"])
    sr, hop = feature.params["sr"], feature.params["hop_length"]
    onset = librosa.onset.onset_strength(S=librosa.amplitude_to_db(cqt.T, ref=np.max), sr=sr)
    _, beats = librosa.beat.beat_track(onset_envelope=onset, sr=sr, hop_length=hop)
    if len(beats) < 2:
        return chroma
    return librosa.util.sync(chroma, beats, aggregate=np.median)


def twodftm(beat_chroma: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """The median 2D FFT magnitude over windows of ``window`` beats, flattened, raised to
    :data:`POWER` and scaled to unit length."""
    c = beat_chroma
    if c.shape[1] < window:
        c = np.pad(c, ((0, 0), (0, window - c.shape[1])))
    wins = np.lib.stride_tricks.sliding_window_view(c, window, axis=1)  # (12, n, window)
    mags = np.abs(np.fft.fft2(wins.transpose(1, 0, 2)))  # (n, 12, window)
    v = np.median(mags, axis=0).ravel() ** POWER
    return v / max(np.linalg.norm(v), 1e-9)


def embed(ds: StoreDataset) -> np.ndarray:
    """The 2DFTM vector of every file of ``ds`` ``(files, 12 * WINDOW)``."""
    feature = ds.feature
    if feature.kind != "cqt" or feature.params.get("log"):
        raise ValueError(f"the 2DFTM baseline needs a CQT magnitude store, got {feature.kind} "
                         f"{feature.params}")  # fmt: skip
    out = []
    for block in ds.file_frames("features", ds.files):
        cqt = block.reshape(len(block), -1).astype(np.float32)
        out.append(twodftm(beat_chroma(cqt, feature)))
    return np.stack(out)


def score(ds: StoreDataset) -> dict:
    """Retrieval metrics of the baseline on the files of ``ds`` (each queries all others)."""
    works = ds.file_targets[ds.target][ds.files]
    return retrieval_metrics(embed(ds), works) | {
        "files": len(ds.files),
        "works": len(np.unique(works)),
    }
