"""Hours of multi-voice audio with note annotations, made offline and deterministically with
numpy: what ``bench_big.py`` builds a store bigger than memory from.

Each file is 2 to 4 minutes of three voices (bass, an inner voice, a melody) walking a major
scale, rendered from wavetables with an attack and a decay; notes come at about 10 per second
(about 32,000 an hour; MAESTRO has ~35,000), with rests. The pyjama has every note (``pitchmidi``,
MIDI segments) and a ``style`` label per file. The same ``seed`` gives the same bytes.

    .venv/bin/python benchmarks/big_data.py data/big --hours 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
TABLE = 2048
SCALE = np.array([0, 2, 4, 5, 7, 9, 11])
STYLES = ("chorale", "dance", "march", "song")
# (lowest MIDI, highest MIDI, note seconds low-high, harmonic amplitudes, level)
VOICES = (
    (36, 52, (0.3, 0.9), (1.0, 0.5, 0.3, 0.15, 0.08), 0.5),
    (52, 69, (0.15, 0.5), (1.0, 0.3, 0.25, 0.1), 0.35),
    (62, 86, (0.08, 0.3), (1.0, 0.6, 0.2, 0.2, 0.1, 0.05), 0.4),
)


def _table(harmonics: tuple[float, ...]) -> np.ndarray:
    phase = np.arange(TABLE) / TABLE * 2 * np.pi
    t = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))
    return (t / np.abs(t).max()).astype(np.float32)


TABLES = [_table(v[3]) for v in VOICES]


def _voice_notes(rng: np.random.Generator, voice: int, seconds: float) -> list[tuple]:
    """``(onset_s, duration_s, midi)`` of one voice: a walk on the scale, with rests."""
    lo, hi, (dmin, dmax), _, _ = VOICES[voice]
    degrees = np.array([o + s for o in range(0, 128, 12) for s in SCALE])
    degrees = degrees[(degrees >= lo) & (degrees <= hi)]
    k = int(rng.integers(len(degrees)))
    t, notes = float(rng.uniform(0, 0.5)), []
    while t < seconds - 0.05:
        slot = float(rng.uniform(dmin, dmax))
        if rng.random() > 0.12:  # else a rest
            dur = min(slot * 0.9, seconds - t)
            notes.append((round(t, 4), round(dur, 4), int(degrees[k])))
        k = int(np.clip(k + rng.integers(-2, 3), 0, len(degrees) - 1))
        t += slot
    return notes


def render(notes_by_voice: list[list[tuple]], seconds: float, seed: int) -> np.ndarray:
    """The voices' notes from their wavetables, with a 10 ms attack and an exponential decay."""
    rng = np.random.default_rng(seed)
    y = np.zeros(int(seconds * SR), np.float32)
    for voice, notes in enumerate(notes_by_voice):
        table, level = TABLES[voice], VOICES[voice][4]
        for onset, dur, midi in notes:
            start, n = int(onset * SR), int(dur * SR)
            n = min(n, len(y) - start)
            if n <= 0:
                continue
            step = 440.0 * 2 ** ((midi - 69) / 12) / SR * TABLE
            idx = (np.arange(n, dtype=np.float32) * np.float32(step)).astype(np.int64) % TABLE
            env = np.minimum(1.0, np.arange(n, dtype=np.float32) / (0.01 * SR))
            env *= np.exp(np.arange(n, dtype=np.float32) * np.float32(-1.5 / SR))
            y[start : start + n] += level * float(rng.uniform(0.7, 1.0)) * table[idx] * env
    y += 0.002 * rng.standard_normal(len(y)).astype(np.float32)
    return 0.9 * y / max(1e-9, float(np.abs(y).max()))


def _file(root: Path, i: int, seconds: float, seed: int) -> dict:
    rng = np.random.default_rng([seed, i])
    voices = [_voice_notes(rng, v, seconds) for v in range(len(VOICES))]
    name = f"audio/{i // 100:03d}/piece-{i:05d}.wav"
    path = root / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        sf.write(
            tmp, render(voices, seconds, seed * 100003 + i), SR, subtype="PCM_16", format="WAV"
        )
        tmp.rename(path)
    notes = sorted((n for v in voices for n in v), key=lambda n: (n[0], n[2]))
    return {
        "filepath": [{"value": name}],
        "style": [{"value": STYLES[int(rng.integers(len(STYLES)))]}],
        "pitchmidi": [{"time": t, "duration": d, "value": m} for t, d, m in notes],
    }


def durations(hours: float, seed: int = 0) -> list[float]:
    """File lengths (2 to 4 minutes) adding up to ``hours``."""
    rng = np.random.default_rng([seed, 7])
    out, total = [], 0.0
    while total < hours * 3600:
        out.append(round(float(rng.uniform(120, 240)), 2))
        total += out[-1]
    return out


def make_big(root: str | Path, hours: float, seed: int = 0, jobs: int = 2) -> list[dict]:
    """Render the files of ``hours`` into ``root/audio`` (those already there are kept) and
    return their pyjama entries, in order."""
    from joblib import Parallel, delayed

    root = Path(root)
    lengths = durations(hours, seed)
    return Parallel(n_jobs=jobs)(delayed(_file)(root, i, s, seed) for i, s in enumerate(lengths))


def write_pyjama(path: Path, entries: list[dict]) -> Path:
    definitions = {
        "style": {"type_content": "text", "type_extent": "global",
                  "type_constraint": "value_in_dictionary", "dictionary": list(STYLES)},
        "pitchmidi": {"type_content": "numeric", "type_extent": "segment"},
    }  # fmt: skip
    doc = {"schemaversion": 1.4,
           "collection": {"descriptiondefinition": definitions, "entry": entries}}  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    entries = make_big(args.root, args.hours, jobs=args.jobs)
    p = write_pyjama(Path(args.root) / "big.pyjama", entries)
    digest = hashlib.sha1(p.read_bytes()).hexdigest()[:12]
    print(
        f"{len(entries)} files, {sum(len(e['pitchmidi']) for e in entries)} notes: {p} ({digest})"
    )


if __name__ == "__main__":
    main()
