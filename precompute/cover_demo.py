"""A cover-song demo like real covers, rendered offline from the folk tunes music21 ships.

Each work is one tune of O'Neill's Music of Ireland (1850) or of the Essen folksong collection
(never one of the old demo's tunes, which come from Ryan's Mammoth Collection, and never a
title twice), played in several versions. Every version draws, from a seed of its own:

- the key (12 transpositions, a different one for each version of a work) and the tempo
  (0.7-1.4x);
- the instrumentation: the melody on one or two of the 11 :data:`MELODY` timbres at once
  (sometimes an octave apart), the accompaniment on others of the 14 :data:`TIMBRES`;
- the accompaniment and harmonisation: a bass, chords (held, broken or off the beat), a
  counter-melody in thirds, each there or not, over chords chosen from the primary triads, from
  every diatonic triad, or with sevenths;
- the structure of its first time through: an intro of accompaniment alone, the first phrase
  repeated or dropped, the second half first; then the tune again from its start, as players
  repeat a tune, until :data:`MAX_S` (every version is as long);
- the recording: reverb, noise, a low- or high-pass tilt, the level.

Rendering is wavetable synthesis (one band-limited cycle per timbre and octave, read with
linear interpolation), so that a few hundred works take minutes. The pyjama holds, per version,
``work-id`` (the tune's number), ``title``, ``collection`` and ``arrangement`` (what was drawn,
as text). The same bytes come out on every run and on any number of jobs: every draw comes
from a seed of the work and version, nothing from the clock.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from common.fileio import atomic_write
from common.pyjama import Atom, Definition, make_collection, write_pyjama

from .demo import top_line

SR = 22050
COLLECTIONS = ("oneills1850", "essenFolksong")
QUARTER_S = 0.42  # seconds per quarter note at tempo 1
MAX_S = 30.0  # the length of every version
MIN_BARS = 8
TABLE = 2048  # samples per wavetable cycle
# harmonic amplitudes (k = 1, 2, ...), envelope (attack s, decay time constant s or 0 for held),
# vibrato depth; the melody is played by the first ones, any of them accompanies
TIMBRES: dict[str, tuple] = {
    "fiddle": (lambda k: 1.0 / k, 0.03, 0.0, 0.004),
    "flute": (lambda k: np.exp(-1.1 * (k - 1)), 0.04, 0.0, 0.003),
    "clarinet": (lambda k: np.where(k % 2 == 1, 1.0 / k, 0.04 / k), 0.02, 0.0, 0.0),
    "oboe": (lambda k: np.exp(-0.5 * (k - 4) ** 2 / 4) + 0.3 / k, 0.02, 0.0, 0.002),
    "trumpet": (lambda k: 1.0 / k**0.7, 0.05, 0.0, 0.002),
    "accordion": (lambda k: 1.0 / k**0.8 * (1 + 0.5 * (k % 3 == 0)), 0.02, 0.0, 0.0),
    "whistle": (lambda k: np.where(k == 1, 1.0, 0.03 / k), 0.02, 0.0, 0.005),
    "organ": (lambda k: np.where(np.isin(k, (1, 2, 3, 4, 6, 8)), 0.7, 0.02), 0.01, 0.0, 0.0),
    "piano": (lambda k: 1.0 / k**1.3, 0.005, 0.6, 0.0),
    "guitar": (lambda k: 1.0 / k**1.6, 0.004, 0.4, 0.0),
    "harp": (lambda k: 1.0 / k**2.2, 0.004, 0.8, 0.0),
    "marimba": (lambda k: np.where(np.isin(k, (1, 4, 10)), 1.0 / k**0.5, 0.0), 0.003, 0.25, 0.0),
    "strings": (lambda k: 1.0 / k**1.1, 0.15, 0.0, 0.003),
    "square": (lambda k: np.where(k % 2 == 1, 1.0 / k, 0.0), 0.01, 0.0, 0.0),
}
MELODY = ("fiddle", "flute", "clarinet", "oboe", "trumpet", "accordion", "whistle", "piano",
          "guitar", "square", "strings")  # fmt: skip
STRUCTURES = ("as written", "intro", "first phrase twice", "first phrase dropped",
              "second half first")  # fmt: skip
CHORDS = {  # scale-degree triads (semitones above the tonic), per mode
    "major": {"I": (0, 4, 7), "IV": (5, 9, 0), "V": (7, 11, 2), "ii": (2, 5, 9),
              "vi": (9, 0, 4), "iii": (4, 7, 11)},
    "minor": {"i": (0, 3, 7), "iv": (5, 8, 0), "V": (7, 11, 2), "III": (3, 7, 10),
              "VI": (8, 0, 3), "VII": (10, 2, 5)},
}  # fmt: skip
PRIMARY = {"I", "IV", "V", "i", "iv"}


@dataclass(frozen=True)
class Tune:
    collection: str
    title: str
    notes: tuple[tuple[float, float, int], ...]  # (onset, duration in quarters, midi)
    bar_q: float  # quarters per bar
    tonic: int  # pitch class
    mode: str  # major / minor: the harmony's palette (dorian, aeolian, phrygian count as minor)


# -- the tunes ----------------------------------------------------------------------------
DANCE_WORDS = ("reel", "jig", "hornpipe", "strathspey", "polka", "waltz", "march", "slide")


def _norm(title: str) -> str:
    """A title's letters, lower case, without articles and a trailing dance type, so that
    "The Catholic Boys" and Ryan's "CatholicBoysJig" are one tune."""
    title = re.sub(r"([a-z])([A-Z])", r"\1 \2", title).replace("'", "")
    words = [
        w for w in re.sub(r"[^a-z ]", " ", title.lower()).split() if w not in ("the", "a", "an")
    ]
    if len(words) > 1 and words[-1] in DANCE_WORDS:
        words = words[:-1]
    return "".join(words)


def old_demo_titles() -> set[str]:
    """The titles of the old demo's tunes (every tune of Ryan's Mammoth Collection, so that no
    future size of the old demo can share one)."""
    import music21

    folder = Path(music21.__file__).parent / "corpus" / "ryansMammoth"
    return {_norm(p.stem) for p in folder.glob("*.abc")}


def candidates() -> list[tuple[str, str, str]]:
    """``(collection, title, abc text)`` of every tune with a title not seen before, the
    collections interleaved (a tune of each in turn), in a fixed order."""
    import music21

    root = Path(music21.__file__).parent / "corpus"
    per: list[list[tuple[str, str, str]]] = []
    for name in COLLECTIONS:
        tunes = []
        for path in sorted((root / name).glob("*.abc")):
            text = path.read_text(encoding="utf-8", errors="replace")
            for chunk in re.split(r"(?m)^(?=X:)", text)[1:]:
                title = re.search(r"(?m)^T:\s*(.+)$", chunk)
                if title and "K:" in chunk:
                    tunes.append((name, title.group(1).strip(), chunk))
        per.append(tunes)
    out = []
    for i in range(max(len(t) for t in per)):
        out += [tunes[i] for tunes in per if i < len(tunes)]
    return out


def parse_tune(collection: str, title: str, abc: str) -> Tune | None:
    """The tune's top line, meter and key; ``None`` when music21 cannot read it, or it has
    fewer than :data:`MIN_BARS` bars or no notes."""
    from music21 import converter, key, meter

    try:
        score = converter.parse(abc, format="abc")
        score.stripTies(inPlace=True)
    except Exception:  # noqa: BLE001 - any tune music21 cannot read is skipped
        return None
    flat = score.flatten()
    notes = top_line(score)
    ts = next(iter(flat.getElementsByClass(meter.TimeSignature)), None)
    bar_q = float(ts.barDuration.quarterLength) if ts else 4.0
    if not notes or notes[-1][0] + notes[-1][1] < MIN_BARS * bar_q:
        return None
    ks = next(iter(flat.getElementsByClass(key.KeySignature)), None)
    k = ks if isinstance(ks, key.Key) else (ks.asKey() if ks else key.Key("C"))
    mode = "minor" if k.mode in ("minor", "dorian", "aeolian", "phrygian", "locrian") else "major"
    return Tune(collection, title, tuple(notes), bar_q, k.tonic.pitchClass, mode)


def corpus_works(n: int, jobs: int = 1) -> list[Tune]:
    """The first ``n`` readable tunes of :func:`candidates`, none of the old demo's titles."""
    from joblib import Parallel, delayed

    banned, seen, out = old_demo_titles(), set(), []
    todo = []
    for c, title, abc in candidates():
        t = _norm(title)
        if t and t not in banned and t not in seen:
            seen.add(t)
            todo.append((c, title, abc))
    lo = 0
    while lo < len(todo):  # chunks of about what is still needed (most tunes are readable)
        step = max(32, int(1.2 * (n - len(out))))
        chunk = todo[lo : lo + step]
        lo += step
        parsed = Parallel(n_jobs=jobs)(delayed(parse_tune)(*c) for c in chunk)
        out += [t for t in parsed if t is not None]
        if len(out) >= n:
            return out[:n]
    import music21

    root = Path(music21.__file__).parent / "corpus"
    raise ValueError(f"{root}/{{{','.join(COLLECTIONS)}}}: {len(out)} usable tunes (readable, at "
                     f"least {MIN_BARS} bars, a title of their own), {n} needed")  # fmt: skip


# -- arranging ----------------------------------------------------------------------------
def harmonise(tune: Tune, palette: str, transpose: int) -> list[tuple[float, float, tuple]]:
    """``(onset, duration in quarters, pitch classes)`` of a chord per half bar: the triad of
    the palette that holds most of the melody sounding there (the tonic's on a tie)."""
    chords = CHORDS["minor" if tune.mode == "minor" else "major"]
    names = [c for c in chords if palette != "primary" or c in PRIMARY]
    span = tune.bar_q / 2 if tune.bar_q >= 3 else tune.bar_q
    end = tune.notes[-1][0] + tune.notes[-1][1]
    out = []
    for lo in np.arange(0, end, span):
        weight = dict.fromkeys(names, 0.0)
        for on, d, m in tune.notes:
            overlap = min(on + d, lo + span) - max(on, lo)
            if overlap > 0:
                for c in names:
                    if (m - tune.tonic) % 12 in chords[c]:
                        weight[c] += overlap
        best = max(names, key=lambda c: (weight[c], c in PRIMARY, -names.index(c)))
        pcs = tuple((tune.tonic + transpose + s) % 12 for s in chords[best])
        if palette == "sevenths" and best in ("V", "ii", "IV", "iv"):
            pcs = (*pcs, (pcs[0] + (11 if best == "IV" else 10)) % 12)  # IV maj7, else minor 7th
        out.append((float(lo), span, pcs))
    return out


def _near(pc: int, low: int) -> int:
    """The MIDI note of pitch class ``pc`` at or just above ``low``."""
    return low + (pc - low) % 12


@dataclass
class Version:
    transpose: int
    tempo: float
    structure: str
    melody: tuple[str, ...]
    octave_double: bool
    bass: str | None
    chords: tuple[str, str] | None  # (style, timbre)
    counter: str | None
    palette: str
    reverb_s: float
    snr_db: float | None
    tilt: str
    level: float

    def describe(self) -> list[str]:
        out = [f"transpose {self.transpose:+d}", f"tempo x{self.tempo:.2f}", self.structure,
               "melody " + " + ".join(self.melody) + (" (octaves)" if self.octave_double else ""),
               f"reverb {self.reverb_s:.2f} s", f"tilt {self.tilt}",
               f"level {self.level:.2f}"]  # fmt: skip
        if self.bass or self.chords:
            out.append(f"harmony {self.palette}")
        if self.bass:
            out.append(f"bass {self.bass}")
        if self.chords:
            out.append(f"chords {self.chords[0]} {self.chords[1]}")
        if self.counter:
            out.append(f"counter-melody {self.counter}")
        if self.snr_db is not None:
            out.append(f"noise {self.snr_db:.0f} dB SNR")
        return out


def draw_versions(title: str, n: int) -> list[Version]:
    """``n`` versions of a work, each key its own, every other choice drawn per version."""
    rng = np.random.default_rng(_seed(title, "keys"))
    keys = rng.permutation(np.arange(-5, 7))[:n]
    out = []
    for v in range(n):
        r = np.random.default_rng(_seed(title, v))
        timbres = list(r.permutation(list(TIMBRES)))
        lead = [t for t in timbres if t in MELODY][: 1 + int(r.random() < 0.35)]
        rest = [t for t in timbres if t not in lead]
        structure = str(r.choice(STRUCTURES))
        bass = rest[0] if r.random() < 0.7 else None
        chords = (
            (str(r.choice(["held", "broken", "off-beat"])), rest[1]) if r.random() < 0.7 else None
        )
        if structure == "intro" and not (bass or chords):
            bass = rest[0]  # an intro is the accompaniment's: never silence
        out.append(
            Version(
                transpose=int(keys[v]),
                tempo=float(np.exp(r.uniform(np.log(0.7), np.log(1.4)))),
                structure=structure,
                melody=tuple(lead),
                octave_double=len(lead) == 2 and r.random() < 0.5,
                bass=bass,
                chords=chords,
                counter=rest[2] if r.random() < 0.35 else None,
                palette=str(r.choice(["primary", "diatonic", "sevenths"])),
                reverb_s=float(r.choice([0.0, r.uniform(0.2, 1.5)])),
                snr_db=float(r.uniform(15, 45)) if r.random() < 0.6 else None,
                tilt=str(r.choice(["flat", "dark", "bright"])),
                level=float(r.uniform(0.25, 0.95)),
            )
        )
    return out


def _seed(title: str, v) -> int:
    return int.from_bytes(hashlib.sha1(f"{title}/{v}".encode()).digest()[:8], "little")


def bars_of(tune: Tune, structure: str) -> list[int | None]:
    """The bars of the version's first time through, in order (``None``: a bar of
    accompaniment alone); :func:`arrange` then plays the tune again from its start."""
    n = int(np.ceil((tune.notes[-1][0] + tune.notes[-1][1]) / tune.bar_q - 1e-9))
    bars: list[int | None] = list(range(n))
    if structure == "intro":
        bars = [None, None, *bars]
    elif structure == "first phrase twice":
        bars = bars[:4] + bars
    elif structure == "first phrase dropped":
        bars = bars[4:]
    elif structure == "second half first":
        bars = bars[n // 2 :] + bars[: n // 2]
    return bars


def arrange(tune: Tune, v: Version) -> list[tuple[float, float, int, str, float]]:
    """Sounding notes ``(onset s, duration s, midi, timbre, gain)`` of a version: its first
    time through, then the tune again from the start, as a performance repeats it, up to
    :data:`MAX_S` (so that every version is as long)."""
    q = QUARTER_S / v.tempo
    harmony = harmonise(tune, v.palette, v.transpose)
    out: list[tuple[float, float, int, str, float]] = []
    scale = _scale(tune, v.transpose)
    n_bars = int(np.ceil((tune.notes[-1][0] + tune.notes[-1][1]) / tune.bar_q - 1e-9))
    played = itertools.chain(bars_of(tune, v.structure), itertools.cycle(range(n_bars)))
    for slot, bar in enumerate(played):
        t0 = slot * tune.bar_q * q
        if t0 >= MAX_S:
            break
        lo, hi = (bar or 0) * tune.bar_q, ((bar or 0) + 1) * tune.bar_q
        if bar is not None:
            for on, d, m in tune.notes:
                if lo <= on < hi:
                    s, dur, p = t0 + (on - lo) * q, 0.92 * d * q, m + v.transpose
                    for i, timbre in enumerate(v.melody):
                        shift = 12 if (v.octave_double and i == 1) else 0
                        out.append((s, dur, p + shift, timbre, 0.6))
                    if v.counter:
                        out.append((s, dur, _third_below(p, scale), v.counter, 0.35))
        for on, d, pcs in harmony:
            h = (bar or 0) * tune.bar_q
            if h <= on < h + tune.bar_q:
                s, dur = t0 + (on - h) * q, d * q
                if v.bass:
                    out.append((s, 0.95 * dur, _near(pcs[0], 36), v.bass, 0.5))
                if v.chords:
                    out += _chord_notes(pcs, s, dur, q, *v.chords)
    return [n for n in out if n[0] < MAX_S]


def _scale(tune: Tune, transpose: int) -> np.ndarray:
    steps = (0, 2, 3, 5, 7, 8, 10) if tune.mode == "minor" else (0, 2, 4, 5, 7, 9, 11)
    return np.array([(tune.tonic + transpose + s) % 12 for s in steps])


def _third_below(midi: int, scale: np.ndarray) -> int:
    """The scale tone two steps below ``midi`` (a diatonic third), or a minor third."""
    below = [m for m in range(midi - 5, midi - 2) if m % 12 in scale]
    return below[0] if below else midi - 3


def _chord_notes(pcs, s: float, dur: float, q: float, style: str, timbre: str) -> list:
    notes = [_near(pc, 55) for pc in pcs]
    if style == "held":
        return [(s, 0.95 * dur, m, timbre, 0.22) for m in notes]
    if style == "broken":
        k = max(1, int(round(dur / (q / 2))))
        return [(s + i * dur / k, 0.9 * dur / k, notes[i % len(notes)], timbre, 0.3)
                for i in range(k)]  # fmt: skip
    return [(s + dur / 2, 0.4 * dur, m, timbre, 0.22) for m in notes]  # off the beat


# -- rendering ----------------------------------------------------------------------------
_TABLES: dict[str, np.ndarray] = {}


def tables(timbre: str) -> np.ndarray:
    """One cycle per octave band ``(11, TABLE + 1)``: band ``b`` (MIDI ``12 b`` up) holds the
    harmonics below Nyquist for the band's highest note, normalised to a peak of 1."""
    if timbre not in _TABLES:
        amps_of = TIMBRES[timbre][0]
        phase = 2 * np.pi * np.arange(TABLE + 1) / TABLE
        rows = []
        for band in range(11):
            f_top = 440.0 * 2 ** ((12 * band + 12 - 69) / 12)
            k = np.arange(1, max(1, min(40, int(0.45 * SR / f_top))) + 1)
            a = np.asarray(amps_of(k), dtype=np.float64) * np.ones(len(k))
            y = (a[:, None] * np.sin(k[:, None] * phase[None])).sum(0)
            rows.append(y / max(1e-9, np.abs(y).max()))
        _TABLES[timbre] = np.stack(rows)
    return _TABLES[timbre]


def synth(midi: int, n: int, timbre: str, gain: float, phase0: float) -> np.ndarray:
    """One note: the timbre's table read at the note's frequency, times its envelope."""
    _, attack, decay, vib = TIMBRES[timbre]
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(n) / SR
    if vib:
        pos = phase0 + np.cumsum(f0 * (1 + vib * np.sin(2 * np.pi * 5.5 * t))) / SR
    else:
        pos = phase0 + f0 * t
    x = (pos % 1.0) * TABLE
    i = x.astype(np.int64)
    table = tables(timbre)[min(10, max(0, midi // 12))]
    y = table[i] + (x - i) * (table[i + 1] - table[i])
    env = np.minimum(1.0, t / attack) if attack else np.ones(n)
    if decay:
        env *= np.exp(-t / decay)
    release = min(n, int(0.02 * SR))
    env[n - release :] *= np.linspace(1, 0, release)
    return gain * env * y


def render(notes, v: Version, seed: int) -> np.ndarray:
    """The mix of a version's notes, then its recording: reverb, tilt, noise and level."""
    from scipy.signal import fftconvolve, lfilter

    rng = np.random.default_rng(seed)
    end = max((s + d for s, d, *_ in notes), default=1.0)
    y = np.zeros(int(np.ceil(min(MAX_S, end + 0.3) * SR)))
    for s, d, m, timbre, gain in notes:
        a = int(round(s * SR))
        n = min(int(round(d * SR)), len(y) - a)
        if n > 0:
            y[a : a + n] += synth(m, n, timbre, gain, rng.random())
    if v.reverb_s:
        t = np.arange(int(v.reverb_s * SR)) / SR
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / v.reverb_s)
        wet = fftconvolve(y, ir / np.sqrt((ir**2).sum()))[: len(y)]
        y = y + 0.35 * wet
    if v.tilt != "flat":  # a one-pole low-pass (dark) or its complement (bright)
        a = np.exp(-2 * np.pi * (1800.0 if v.tilt == "dark" else 900.0) / SR)
        low = lfilter([1 - a], [1, -a], y)
        y = low if v.tilt == "dark" else y - 0.7 * low
    if v.snr_db is not None:
        noise = rng.standard_normal(len(y))
        y = y + noise * np.sqrt(np.mean(y**2) / 10 ** (v.snr_db / 10))
    return (v.level * y / max(1e-9, np.abs(y).max())).astype(np.float32)


def render_work(out: Path, work: int, tune: Tune, versions: int) -> list[tuple[str, dict]]:
    """Write the versions of one work; their pyjama entries."""
    items = []
    for i, v in enumerate(draw_versions(tune.title, versions)):
        notes = arrange(tune, v)
        y = render(notes, v, _seed(tune.title, f"render/{i}"))
        name = f"audio/{work:03d}-v{i}.wav"
        with atomic_write(out / name) as tmp:
            sf.write(tmp, y, SR, subtype="PCM_16", format="WAV")
        items.append((name, {"work-id": [Atom(value=work)], "title": [Atom(value=tune.title)],
                             "collection": [Atom(value=tune.collection)],
                             "arrangement": [Atom(value=d) for d in v.describe()]}))  # fmt: skip
    return items


def make_cover_demo(
    out: str | os.PathLike, works: int = 200, versions: int = 5, jobs: int = 2, after: int = 0
) -> Path:
    """Write ``out/audio/*.wav`` and ``out/covers.pyjama``; returns the pyjama path.

    ``after``: the works start after the first ``after`` tunes (numbered from ``after``), so
    that a large set (``after=200``) shares no work with the cover demo (the first 200)."""
    from joblib import Parallel, delayed

    if versions < 2 or versions > 12:
        raise ValueError(f"versions must be 2 to 12 (one key each), got {versions}")
    if works < 2:
        raise ValueError(f"works must be 2 or more (a query needs another work), got {works}")
    if after < 0:
        raise ValueError(f"after must be 0 or more, got {after}")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    tunes = corpus_works(after + works, jobs)[after:]
    per_work = Parallel(n_jobs=jobs, batch_size=8)(
        delayed(render_work)(out, after + w, t, versions) for w, t in enumerate(tunes)
    )
    definitions = {
        "work-id": Definition("numeric", "global", "free"),
        "title": Definition("text", "global", "free"),
        "collection": Definition("text", "global", "value_in_dictionary", list(COLLECTIONS)),
        "arrangement": Definition("text", "global", "free"),
    }
    coll = make_collection([it for w in per_work for it in w], definitions, base_dir=out)
    return write_pyjama(coll, out / "covers.pyjama")
