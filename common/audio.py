"""Decode audio files to mono float32 at a given rate, with errors a person can act on."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


class AudioError(Exception):
    """An audio file that cannot be used, with the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Audio:
    y: np.ndarray  # float32 [shape=(n_samples,)], mono, at ``sr``
    sr: int
    orig_sr: int
    orig_channels: int
    checksum: str  # sha1 of the file's bytes

    @property
    def duration_s(self) -> float:
        return len(self.y) / self.sr


def load_audio(path: str | os.PathLike, sr: int | None = None) -> Audio:
    """Decode ``path`` with soundfile, fold to mono and resample to ``sr`` (soxr).

    Raises :class:`AudioError` for a missing, empty, undecodable or silent-less
    file, and for NaN/Inf samples. Stereo and other rates are not errors.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AudioError(path, f"cannot read: {e.strerror}") from None
    if not data:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        y, orig_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(path, f"cannot decode ({_reason(e, path)})") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot decode ({e})") from None
    if y.shape[0] == 0:
        raise AudioError(path, "has a header but no samples")
    if not np.isfinite(y).all():
        raise AudioError(path, "contains NaN or Inf samples")
    channels = y.shape[1]
    y = y.mean(axis=1) if channels > 1 else y[:, 0]
    if sr is not None and sr != orig_sr:
        y = resample(y, orig_sr, sr)
    return Audio(
        y=np.ascontiguousarray(y, dtype=np.float32),
        sr=int(sr or orig_sr),
        orig_sr=int(orig_sr),
        orig_channels=int(channels),
        checksum=hashlib.sha1(data).hexdigest(),
    )


def resample(y: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    import librosa

    return librosa.resample(y, orig_sr=orig_sr, target_sr=sr, res_type="soxr_hq").astype(np.float32)


def _reason(e: Exception, path: Path) -> str:
    msg = str(getattr(e, "error_string", "") or e).strip().rstrip(".")
    if "recogni" in msg.lower() or "unknown format" in msg.lower():
        ext = path.suffix or "(no extension)"
        return f"unsupported or corrupt audio: libsndfile does not recognise this {ext} file"
    return msg
