"""An offline, deterministic demo dataset rendered from the music21 corpus.

Tunes of Ryan's Mammoth Collection (1883), shipped with music21, are rendered
with additive synthesis. Each tune is one work, rendered in three versions
(another key, another tempo, another timbre). The pyjama holds, per clip:

- ``genre``: the dance type (reel, jig, hornpipe, strathspey), global text;
- ``tag``: several global labels (timbre, ``bass``, ``fast`` / ``slow``);
- ``instrument``: the timbre alone, one label per clip (fiddle, flute, clarinet, organ, pluck);
- ``pitchmidi``: every sounding note as a segment with its MIDI pitch;
- ``f0multi``: a breakpoint track of 2 rows (melody, bass), 10 ms grid, 0 = silent;
- ``work-id``: the tune's number.

The same bytes come out on every run: no randomness without a fixed seed,
no clock, no download.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from common.fileio import atomic_write
from common.pyjama import Atom, Definition, make_collection, write_pyjama

DANCES = ("Reel", "Jig", "Hornpipe", "Strathspey")
# Seconds per quarter note of each dance at the original tempo.
QUARTER_S = {"Reel": 0.30, "Jig": 0.36, "Hornpipe": 0.34, "Strathspey": 0.40}
VERSIONS = (  # (transposition in semitones, tempo factor, timbre offset, with bass)
    (0, 1.0, 0, True),
    (3, 0.85, 1, False),
    (-4, 1.2, 2, True),
)
TIMBRES = ("fiddle", "flute", "clarinet", "organ", "pluck")
SR = 22050
F0_HOP_S = 0.01


@dataclass(frozen=True)
class Note:
    onset_s: float
    duration_s: float
    midi: int
    voice: int  # 0 melody, 1 bass


def corpus_tunes(per_class: int) -> list[tuple[str, str, Path]]:
    """``(dance, title, path)`` of the first ``per_class`` tunes of each dance, sorted by name."""
    import music21

    folder = Path(music21.__file__).parent / "corpus" / "ryansMammoth"
    out = []
    for dance in DANCES:
        files = sorted(
            p for p in folder.glob(f"*{dance}.abc") if not p.name.endswith(f"Slip{dance}.abc")
        )
        if len(files) < per_class:
            raise RuntimeError(f"music21 corpus has {len(files)} {dance} tunes, {per_class} needed")
        out += [(dance.lower(), p.stem, p) for p in files[:per_class]]
    return out


def top_line(score) -> list[tuple[float, float, int]]:
    """``(onset, duration in quarters, midi)`` of a parsed tune's top line: the highest pitch of
    each note or chord, grace notes and chord symbols left out."""
    from music21 import chord, harmony, note

    out = []
    for n in score.flatten().notes:
        if isinstance(n, harmony.ChordSymbol) or n.duration.isGrace or n.quarterLength <= 0:
            continue
        if isinstance(n, chord.Chord):
            midi = max(p.midi for p in n.pitches)
        elif isinstance(n, note.Note):
            midi = n.pitch.midi
        else:
            continue
        out.append((float(n.offset), float(n.quarterLength), int(midi)))
    return out


def tune_line(path: Path) -> list[tuple[float, float, int]]:
    """The top line (see :func:`top_line`) of the tune in ``path``, its ties merged."""
    from music21 import converter

    score = converter.parse(str(path), format="abc")
    score.stripTies(inPlace=True)  # the parsed score is ours: no copy of it
    return top_line(score)


def melody_notes(
    line: list[tuple[float, float, int]], quarter_s: float, clip_s: float
) -> list[tuple[float, float, int]]:
    """``(onset_s, nominal_duration_s, midi)`` of a tune's top line, up to ``clip_s``."""
    out = []
    for on, ql, midi in line:
        onset = on * quarter_s
        if onset >= clip_s:
            break
        out.append((onset, min(ql * quarter_s, clip_s - onset), midi))
    return out


def arrange(
    melody: list[tuple[float, float, int]], transpose: int, with_bass: bool, beat_s: float
) -> list[Note]:
    """Sounding notes: melody articulated (90% of nominal) plus a bass on every other beat."""
    notes = [Note(round(t, 6), round(d * 0.9, 6), m + transpose, 0) for t, d, m in melody]
    if with_bass and melody:
        end = melody[-1][0] + melody[-1][1]
        t = melody[0][0]
        while t < end - 1e-9:
            sounding = [m for on, d, m in melody if on <= t + 1e-9 < on + d] or [melody[0][2]]
            pc = (sounding[0] + transpose) % 12
            dur = min(2 * beat_s, end - t)
            notes.append(Note(round(t, 6), round(dur * 0.95, 6), 40 + (pc - 40) % 12, 1))
            t += 2 * beat_s
    return notes


def synth_note(
    midi: float, n_samples: int, timbre: str, rng: np.random.Generator, bass: bool
) -> np.ndarray:
    """Additive synthesis of one note with a timbre-specific harmonic envelope."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(n_samples) / SR
    n_harm = max(1, min(24, int(0.45 * SR / f0)))
    k = np.arange(1, n_harm + 1)
    if timbre == "fiddle":
        amps = 1.0 / k
    elif timbre == "flute":
        amps = np.exp(-0.9 * (k - 1))
    elif timbre == "clarinet":
        amps = np.where(k % 2 == 1, 1.0 / k, 0.05 / k)
    elif timbre == "organ":
        amps = np.where(np.isin(k, (1, 2, 3, 4, 6, 8)), 0.7, 0.02)
    else:  # pluck
        amps = 1.0 / k**1.5
    vib = 0.0015 * np.sin(2 * np.pi * 5.5 * t) if timbre in ("fiddle", "flute") else 0.0
    phase = 2 * np.pi * np.cumsum(f0 * (1 + vib) * np.ones_like(t)) / SR
    offsets = rng.uniform(0, 2 * np.pi, n_harm)
    y = (amps[:, None] * np.sin(k[:, None] * phase[None] + offsets[:, None])).sum(0)
    attack = min(n_samples, int(0.01 * SR))
    release = min(n_samples - attack, int(0.03 * SR))
    env = np.ones(n_samples)
    env[:attack] = np.linspace(0, 1, attack, endpoint=False)
    if release:
        env[-release:] = np.linspace(1, 0, release)
    if timbre == "pluck":
        env *= np.exp(-3.0 * t)
    gain = 0.35 if bass else 0.6
    return (gain * env * y / amps.sum()).astype(np.float64)


def render(notes: list[Note], clip_s: float, timbre: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.zeros(int(round(clip_s * SR)))
    for n in notes:
        start = int(round(n.onset_s * SR))
        length = min(int(round(n.duration_s * SR)), len(y) - start)
        if length > 0:
            y[start : start + length] += synth_note(n.midi, length, timbre, rng, n.voice == 1)
    y += 0.001 * rng.standard_normal(len(y))
    return (0.9 * y / max(1e-9, np.abs(y).max())).astype(np.float32)


def f0_track(notes: list[Note], clip_s: float) -> tuple[list[float], list[list[float]]]:
    """Breakpoint (times, [melody row, bass row]) on a 10 ms grid, 0 where a voice is silent."""
    times = np.round(np.arange(0, clip_s, F0_HOP_S), 6)
    rows = np.zeros((2, len(times)))
    for n in notes:
        inside = (times > n.onset_s) & (times <= n.onset_s + n.duration_s)
        rows[n.voice, inside] = n.midi
    return times.tolist(), rows.tolist()


def make_demo(out: str | os.PathLike, per_class: int = 13, clip_s: float = 7.5) -> Path:
    """Write ``out/audio/*.wav`` and ``out/demo.pyjama``; returns the pyjama path."""
    out = Path(out)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for work, (dance, title, path) in enumerate(corpus_tunes(per_class)):
        quarter = QUARTER_S[dance.capitalize()]
        line = tune_line(path)
        for v, (transpose, tempo, timbre_offset, with_bass) in enumerate(VERSIONS):
            beat_s = quarter / tempo
            melody = melody_notes(line, beat_s, clip_s)
            notes = arrange(melody, transpose, with_bass, beat_s)
            timbre = TIMBRES[(work + timbre_offset) % len(TIMBRES)]
            seed = int.from_bytes(hashlib.sha1(f"{title}/{v}".encode()).digest()[:4], "little")
            y = render(notes, clip_s, timbre, seed)
            name = f"audio/{dance}-{work:03d}-v{v}.wav"
            with atomic_write(out / name) as tmp:
                sf.write(tmp, y, SR, subtype="PCM_16", format="WAV")
            tags = [timbre, "fast" if tempo > 1 else "slow" if tempo < 1 else "moderate"]
            if with_bass:
                tags.append("bass")
            times, rows = f0_track(notes, clip_s)
            items.append(
                (
                    name,
                    {
                        "genre": [Atom(value=dance)],
                        "tag": [Atom(value=t) for t in tags],
                        "instrument": [Atom(value=timbre)],
                        "pitchmidi": [
                            Atom(value=n.midi, time=n.onset_s, duration=n.duration_s)
                            for n in sorted(notes, key=lambda n: (n.onset_s, n.midi))
                        ],
                        "f0multi": [Atom(value=rows, time=times)],
                        "work-id": [Atom(value=work)],
                        "title": [Atom(value=title)],
                    },
                )
            )
    definitions = {
        "genre": Definition("text", "global", "value_in_dictionary", [d.lower() for d in DANCES]),
        "tag": Definition(
            "text", "global", "value_in_dictionary", [*TIMBRES, "bass", "fast", "moderate", "slow"]
        ),
        "instrument": Definition("text", "global", "value_in_dictionary", list(TIMBRES)),
        "pitchmidi": Definition("numeric", "segment", "free", [0, 127]),
        "f0multi": Definition("numeric", "breakpoint", "free", row_name=["melody", "bass"]),
        "work-id": Definition("numeric", "global", "free"),
        "title": Definition("text", "global", "free"),
    }
    coll = make_collection(items, definitions, base_dir=out)
    return write_pyjama(coll, out / "demo.pyjama")
