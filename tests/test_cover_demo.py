"""The cover demo: real folk tunes, versions that differ the way covers do, the same bytes on
every run."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from click.testing import CliRunner

from precompute import cover_demo as cd
from precompute.cli import main


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("covers-a"), tmp_path_factory.mktemp("covers-b")
    cd.make_cover_demo(a, works=3, versions=4, jobs=1)
    r = CliRunner().invoke(main, ["demo-data", "--cover", "--out", str(b), "--works", "3",
                                  "--versions", "4", "--jobs", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return a, b


def test_a_cover_demo_of_one_version_is_refused_in_one_line(tmp_path):
    r = CliRunner().invoke(
        main, ["demo-data", "--cover", "--out", str(tmp_path), "--versions", "1"]
    )
    assert r.exit_code == 2 and "versions must be 2 to 12" in r.output


def test_the_cover_demo_is_byte_identical_across_runs_and_jobs(two_builds):
    a, b = two_builds
    da, db = _digest(a), _digest(b)
    assert len(da) == 3 * 4 + 1  # the versions and the pyjama
    assert da == db


@pytest.fixture(scope="module")
def tunes():
    return cd.corpus_works(12)


def test_works_are_tunes_the_old_demo_never_played_each_title_once(tunes):
    from precompute.demo import corpus_tunes

    titles = [cd._norm(t.title) for t in tunes]
    assert len(set(titles)) == 12
    # the old demo's tunes as precompute/demo.py picks them (file names: CatholicBoysJig)
    old = {cd._norm(title) for _, title, _ in corpus_tunes(13)}
    assert len(old) == 52 and cd._norm("The Acrobats") in old
    assert cd._norm("MissMcLeodsReel") == cd._norm("Miss McLeod's")
    assert not set(titles) & old
    assert not set(titles) & cd.old_demo_titles()  # nor any tune of Ryan's collection
    assert {t.collection for t in tunes} == set(cd.COLLECTIONS)  # both collections, in turn
    for t in tunes:
        assert t.notes[-1][0] + t.notes[-1][1] >= cd.MIN_BARS * t.bar_q


def test_versions_differ_in_key_tempo_instruments_accompaniment_and_structure(tunes):
    tune = tunes[0]
    vs = cd.draw_versions(tune.title, 12)
    assert sorted(v.transpose for v in vs) == list(range(-5, 7))  # every key once
    assert all(0.7 <= v.tempo <= 1.4 for v in vs)
    assert len({v.melody for v in vs}) > 6 and len({len(v.melody) for v in vs}) == 2
    assert len({v.structure for v in vs}) >= 4
    assert {v.bass is None for v in vs} == {True, False}
    assert {v.chords is None for v in vs} == {True, False}
    assert len({v.palette for v in vs}) == 3
    used = {t for v in vs for t in (*v.melody, v.bass, v.chords and v.chords[1], v.counter) if t}
    assert len(used) > 5  # more instruments than the old demo's five
    assert {v.counter is None for v in vs} == {True, False}
    assert len({v.tilt for v in vs}) == 3 and {v.snr_db is None for v in vs} == {True, False}
    assert {v.reverb_s == 0 for v in vs} == {True, False}
    assert max(v.level for v in vs) / min(v.level for v in vs) > 1.5
    for v in vs:  # every version as long: the tune played again after its first time through
        assert (
            max(s for s, *_ in cd.arrange(tune, v)) > cd.MAX_S - tune.bar_q * cd.QUARTER_S / v.tempo
        )
    # the melody is the tune's, moved to the version's key and tempo
    v = next(v for v in vs if v.structure == "as written")
    notes = cd.arrange(tune, v)
    lead = sorted((s, m) for s, d, m, timbre, g in notes if timbre == v.melody[0])
    q = cd.QUARTER_S / v.tempo
    span = np.ceil((tune.notes[-1][0] + tune.notes[-1][1]) / tune.bar_q - 1e-9) * tune.bar_q
    want = [((k * span + on) * q, m + v.transpose) for k in range(20) for on, d, m in tune.notes
            if (k * span + on) * q < cd.MAX_S]  # fmt: skip
    assert want[-1][0] > tune.notes[-1][0] * q  # played again
    assert [m for _, m in lead] == [m for _, m in want]
    np.testing.assert_allclose([s for s, _ in lead], [s for s, _ in want], atol=1e-9)


def test_an_intro_delays_the_melody_by_two_bars_of_accompaniment(tunes):
    tune = tunes[0]
    v = next(v for v in cd.draw_versions(tune.title, 12) if v.bass or v.chords)
    v.structure, v.counter = "intro", None
    notes = cd.arrange(tune, v)
    q = cd.QUARTER_S / v.tempo
    first_lead = min(s for s, d, m, timbre, g in notes if timbre in v.melody)
    assert first_lead == pytest.approx(2 * tune.bar_q * q + tune.notes[0][0] * q)
    assert min(s for s, *_ in notes) < first_lead  # the accompaniment plays before it


def test_an_intro_is_never_silent():
    for title in ("a", "b", "c", "d", "e", "f", "g", "h"):
        for v in cd.draw_versions(title, 12):
            if v.structure == "intro":
                assert v.bass or v.chords, (title, v)
            assert ("harmony " + v.palette in v.describe()) == bool(v.bass or v.chords)


def test_a_version_sounds_in_its_key(two_builds):
    """The chroma of a rendered version peaks on the pitch classes of its melody."""
    import librosa
    import soundfile as sf

    from common.pyjama import read_pyjama

    a, _ = two_builds
    coll = read_pyjama(a / "covers.pyjama")
    tunes = cd.corpus_works(3)
    entry = coll.entries[0]
    work = int(entry.descriptions["work-id"].atoms[0].value)
    version = int(re.search(r"-v(\d+)\.wav$", str(entry.filepath)).group(1))
    v = cd.draw_versions(tunes[work].title, 4)[version]
    y, sr = sf.read(entry.audio_path)
    chroma = librosa.feature.chroma_cqt(y=y.astype(np.float32), sr=sr).mean(1)
    pcs = np.bincount([(m + v.transpose) % 12 for _, d, m in tunes[work].notes],
                      weights=[d for _, d, _ in tunes[work].notes], minlength=12)  # fmt: skip
    assert np.corrcoef(chroma, pcs)[0, 1] > 0.5


@pytest.fixture(scope="module")
def two_large_builds(tmp_path_factory):
    """A large set in small (``make cover-large`` is 2,000 works x 4 versions after the demo's
    200): 3 works x 2 versions after the first 2, built twice."""
    a, b = tmp_path_factory.mktemp("large-a"), tmp_path_factory.mktemp("large-b")
    cd.make_cover_demo(a, works=3, versions=2, jobs=1, after=2)
    r = CliRunner().invoke(main, ["demo-data", "--cover", "--out", str(b), "--works", "3",
                                  "--versions", "2", "--after", "2", "--jobs", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return a, b


def test_the_large_set_is_byte_identical_and_shares_no_work_with_the_demo(two_large_builds):
    from common.pyjama import read_pyjama

    a, b = two_large_builds
    da = _digest(a)
    assert len(da) == 3 * 2 + 1 and da == _digest(b)
    entries = read_pyjama(a / "covers.pyjama").entries
    ids = sorted({int(e.descriptions["work-id"].atoms[0].value) for e in entries})
    assert ids == [2, 3, 4]  # numbered after the demo's works: one id, one work, in both
    titles = {e.descriptions["title"].atoms[0].value for e in entries}
    first = cd.corpus_works(5)
    assert titles == {t.title for t in first[2:]}
    assert not titles & {t.title for t in first[:2]}  # the demo's (its first works) are not here


def test_make_cover_large_comes_after_every_work_of_the_cover_demo():
    from pathlib import Path

    make = (Path(__file__).parent.parent / "Makefile").read_text()
    after = int(re.search(r"--after (\d+)", make).group(1))
    demo_works = next(p.default for p in main.commands["demo-data"].params if p.name == "works")
    assert after == demo_works == 200
    assert re.search(r"--works \$\(LARGE_WORKS\) --versions 4", make)
    assert re.search(r"(?m)^LARGE_WORKS \?= 2000$", make)
