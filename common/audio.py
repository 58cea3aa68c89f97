"""Decode audio files to mono float32 at a given rate, with errors a person can act on.

libsndfile (``soundfile``) reads WAV, FLAC, AIFF, Ogg (Vorbis, Opus) and MP3: the fast path.
Everything else (m4a/AAC, ALAC, WMA, webm, mp4 audio) is decoded by FFmpeg through PyAV.
Also what the planner needs before decoding anything: a file's content hash (streamed, never
the whole file in memory) and its length at the feature's sample rate, from the header.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import UserError

HASH_CHUNK = 1 << 20
# Formats whose header gives the exact sample count (libsndfile reads it, nothing is guessed).
EXACT_LENGTH_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "AU", "CAF", "OGG"}
# What libsndfile does not read: decoded by FFmpeg (PyAV).
FFMPEG_EXTENSIONS = {".m4a", ".mp4", ".m4b", ".aac", ".alac", ".wma", ".webm", ".mka", ".3gp"}


class AudioError(UserError):
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

    @property
    def duration_s(self) -> float:
        return len(self.y) / self.sr


@dataclass
class AudioInfo:
    """What the header says: enough to lay a file out before decoding it."""

    frames: int  # samples per channel at ``orig_sr``
    orig_sr: int
    channels: int
    format: str

    def n_samples(self, sr: int | None) -> int:
        """Samples after resampling to ``sr``, as :func:`resample` gives them."""
        if sr is None or sr == self.orig_sr:
            return self.frames
        return int(np.ceil(self.frames * (float(sr) / self.orig_sr)))

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "orig_sr": self.orig_sr,
            "channels": self.channels,
            "format": self.format,
        }


def content_hash(path: str | os.PathLike) -> str:
    """blake2b of the file's bytes, read in 1 MiB chunks (32 hex digits)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except IsADirectoryError:
        raise AudioError(path, "is a folder, not an audio file") from None
    except OSError as e:
        raise AudioError(path, f"cannot read: {e.strerror}") from None
    return h.hexdigest()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Sample count, rate and channels of ``path`` without decoding its samples.

    For formats whose header count is not exact (compressed streams), the file is decoded
    once to count its samples, so that the store can be laid out to the frame.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in FFMPEG_EXTENSIONS:  # compressed: decoded once to count
        y, sr = _read(path)
        if len(y) == 0:
            raise AudioError(path, "has a header but no samples")
        return AudioInfo(len(y), sr, y.shape[1], "FFMPEG")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as e:
        raise AudioError(path, f"cannot decode ({_reason(e, path)})") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot decode ({e})") from None
    frames = int(info.frames)
    if info.format not in EXACT_LENGTH_FORMATS:
        frames = len(_read(path)[0])
    if frames <= 0:
        raise AudioError(path, "has a header but no samples")
    return AudioInfo(frames, int(info.samplerate), int(info.channels), str(info.format))


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Samples ``(n, channels)`` float32 and the sample rate."""
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        return _read_ffmpeg(path)
    try:
        y, orig_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(path, f"cannot decode ({_reason(e, path)})") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot decode ({e})") from None
    return y, int(orig_sr)


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with FFmpeg (PyAV), as float32 at its own rate."""
    try:
        import av
    except ImportError:  # pragma: no cover - a declared dependency
        raise AudioError(path, "cannot decode: this format needs PyAV (pip install av)") from None
    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(path, "holds no audio stream")
            sr = stream.codec_context.sample_rate
            # the container's length: drops the encoder's padding after the end
            n = round(float(stream.duration * stream.time_base) * sr) if stream.duration else None
            resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=sr)
            channels = len(stream.layout.channels)
            chunks = [
                out.to_ndarray().reshape(-1, channels)
                # None at the end: what the resampler still holds
                for frame in itertools.chain(container.decode(stream), [None])
                for out in resampler.resample(frame)
            ]
    except av.error.FFmpegError as e:
        raise AudioError(path, f"cannot decode (unsupported or corrupt audio: {e})") from None
    if not chunks:
        return np.zeros((0, 1), np.float32), int(sr)
    y = np.concatenate(chunks).astype(np.float32, copy=False)
    if n:
        y = y[:n]
    return y, int(sr)


def load_audio(path: str | os.PathLike, sr: int | None = None) -> Audio:
    """Decode ``path`` (libsndfile, or FFmpeg for what it does not read), fold to mono and
    resample to ``sr`` (soxr).

    Raises :class:`AudioError` for a missing, empty or undecodable file, one without
    samples, and for NaN/Inf samples. Stereo and other rates are not errors.
    """
    path = Path(path)
    _check_file(path)
    y, orig_sr = _read(path)
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
