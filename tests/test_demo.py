"""The offline demo dataset: valid, deterministic, complete, and annotated where the energy is."""

from __future__ import annotations

import hashlib

import numpy as np
import soundfile as sf

from common.pyjama import read_pyjama


def test_demo_validates_and_has_every_kind_of_annotation(demo_small):
    coll = read_pyjama(demo_small)
    assert coll.problems == [] and len(coll.entries) == 24
    ext = {n: d.type_extent for n, d in coll.definitions.items()}
    assert (
        ext["genre"] == "global"
        and ext["pitchmidi"] == "segment"
        and ext["f0multi"] == "breakpoint"
    )
    assert len({e.descriptions["genre"].atoms[0].value for e in coll.entries}) == 4
    assert max(len(e.descriptions["tag"].atoms) for e in coll.entries) >= 3  # multi-label
    works = {}
    for e in coll.entries:
        works.setdefault(e.descriptions["work-id"].atoms[0].value, []).append(e)
    assert all(len(v) >= 3 for v in works.values())
    # at least two simultaneous voices somewhere in the breakpoint track
    rows = np.array(coll.entries[0].descriptions["f0multi"].atoms[0].value)
    assert rows.shape[0] == 2 and ((rows > 0).sum(0) >= 2).any()


def test_demo_is_the_same_bytes_every_run(demo_small, tmp_path):
    from precompute.demo import make_demo

    again = make_demo(tmp_path, per_class=2, clip_s=4.0)

    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digest(again.parent) == digest(demo_small.parent)


def test_versions_differ_in_key_tempo_and_timbre(demo_small):
    coll = read_pyjama(demo_small)
    v = [e for e in coll.entries if e.descriptions["work-id"].atoms[0].value == 0]
    first = [min(a.value for a in e.descriptions["pitchmidi"].atoms) for e in v]
    assert len(set(first)) == 3
    timbres = [e.descriptions["tag"].atoms[0].value for e in v]
    assert len(set(timbres)) == 3


def _magnitude_at(y, sr, t, freqs_hz, n_fft=4096):
    start = min(max(0, int(t * sr) - n_fft // 2), len(y) - n_fft)
    seg = y[start : start + n_fft] * np.hanning(n_fft)
    spec = np.abs(np.fft.rfft(seg))
    bins = np.round(np.asarray(freqs_hz) * n_fft / sr).astype(int)
    return spec[bins], np.median(spec)


def test_annotated_pitch_is_where_the_energy_is(demo_small):
    coll = read_pyjama(demo_small)
    checked = 0
    for e in coll.entries[::5]:
        y, sr = sf.read(e.audio_path)
        for a in e.descriptions["pitchmidi"].atoms:
            if a.duration < 0.15:
                continue
            mid = a.time + a.duration / 2
            f0 = 440 * 2 ** ((a.value - 69) / 12)
            semitone_up = f0 * 2 ** (1 / 12)
            (at_f0, off), median = _magnitude_at(y, sr, mid, [f0, semitone_up])
            assert at_f0 > 20 * median, (e.filepath, a)
            if a.value >= 55:  # above the bass, where 4096 points resolve a semitone
                assert at_f0 > 3 * off, (e.filepath, a)
            checked += 1
        # the breakpoint track says the same as the segments at a note's middle
        bp = e.descriptions["f0multi"].atoms[0]
        times, rows = np.array(bp.time), np.array(bp.value)
        a = e.descriptions["pitchmidi"].atoms[0]
        k = np.argmin(np.abs(times - (a.time + a.duration / 2)))
        assert a.value in rows[:, k]
    assert checked >= 20
