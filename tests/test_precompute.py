"""The precompute pipeline: targets to the frame, the store's layout, resume, locking, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from common.audio import load_audio
from common.features import make_feature
from common.pause import pause_env
from common.store import read_features, read_file_targets, read_tables
from precompute.cli import main
from precompute.inspect import verify
from precompute.lock import LockedError, StoreLock
from precompute.pipeline import make_plan, run

from .conftest import SR, done_markers, partial_segments, tone, wait_for, write_json, write_wav
from .dense_targets import read_target

GENRES = {
    "type_content": "text",
    "type_extent": "global",
    "type_constraint": "value_in_dictionary",
    "dictionary": ["folk", "jazz"],
}


def silence(duration_s, sr=SR):
    return np.zeros(int(duration_s * sr), dtype=np.float32)


@pytest.fixture
def notes_dataset(tmp_path):
    """Two files with known notes; one stereo at 44.1 kHz."""
    y = silence(3.0)
    y[int(0.5 * SR) : int(1.5 * SR)] += tone(60, 1.0)
    y[int(2.0 * SR) : int(2.5 * SR)] += tone(67, 0.5)
    write_wav(tmp_path / "audio" / "a.wav", y)
    z = tone(64, 2.0, sr=44100)
    write_wav(tmp_path / "audio" / "b.wav", np.stack([z, z], 1), sr=44100)
    times = [round(0.01 * k, 2) for k in range(300)]
    melody = [60.0 if 0.5 < t <= 1.5 else (67.0 if 2.0 < t <= 2.5 else 0.0) for t in times]
    doc = {
        "schemaversion": 1.4,
        "collection": {
            "descriptiondefinition": {"genre": GENRES},
            "entry": [
                {
                    "filepath": [{"value": "audio/a.wav"}],
                    "genre": [{"value": "folk"}],
                    "tag": [{"value": "piano"}, {"value": "slow"}],
                    "work-id": [{"value": 7}],
                    "pitchmidi": [
                        {"time": 0.5, "duration": 1.0, "value": 60},
                        {"time": 2.0, "duration": 0.5, "value": 67},
                    ],
                    "f0multi": [{"time": times, "value": [melody, [0.0] * 300]}],
                    "chord": [
                        {"time": 0.0, "duration": 1.0, "value": "C:maj"},
                        {"time": 1.0, "duration": 2.0, "value": "G:maj"},
                    ],
                },
                {
                    "filepath": [{"value": "audio/b.wav"}],
                    "genre": [{"value": "jazz"}],
                    "tag": [{"value": "slow"}],
                    "work-id": [{"value": 7}],
                    "pitchmidi": [{"time": 0.0, "duration": 2.0, "value": 64}],
                    "f0multi": [{"time": [0.0, 1.0], "value": [[64, 64], [0, 0]]}],
                    "chord": [{"time": 0.0, "duration": 2.0, "value": "E:min"}],
                },
            ],
        },
    }
    return write_json(tmp_path / "notes.pyjama", doc)


def test_targets_land_on_the_right_frames_and_bins(notes_dataset, tmp_path):
    s = run(notes_dataset, "cqt", tmp_path / "stores")
    assert s.ok and s.files == 2
    t = read_tables(s.store_path)
    feats = read_features(s.store_path)
    pitch = read_target(s.store_path, "pitchmidi")
    f0 = read_target(s.store_path, "f0multi")
    assert pitch.dtype == np.uint8 and pitch.shape == (t.total_frames, 360)
    n = int(t.n_frames[0])
    times = np.arange(n) * 512 / SR
    on = pitch[:n]
    expect_60 = (times >= 0.5) & (times < 1.5)  # half-open, as librosa.time_to_frames
    bin60, bin67 = (60 - 24) * 5, (67 - 24) * 5
    assert np.array_equal(on[:, bin60].astype(bool), expect_60)
    assert np.array_equal(on[:, bin67].astype(bool), (times >= 2.0) & (times < 2.5))
    assert on.sum() == expect_60.sum() + ((times >= 2.0) & (times < 2.5)).sum()
    # the target bin is where the CQT's energy is, in the middle of the note
    mid = np.nonzero(expect_60)[0][5:-5]
    assert (np.asarray(feats[mid, 0]).argmax(axis=1) == bin60).all()
    # the breakpoint track agrees with the segments away from note edges; silence (0) is no bin at all
    agree = (f0[:n] == on).all(axis=1)
    assert agree.mean() > 0.97
    assert f0[:, 0].sum() == 0 and pitch[:, 0].sum() == 0
    # second file: frames past the 2-point breakpoint span stay silent
    b = f0[n:]
    tb = np.arange(int(t.n_frames[1])) * 512 / SR
    assert b[:, (64 - 24) * 5][tb <= 1.5].all() and not b[tb > 1.5 + 512 / SR].any()


def test_per_file_targets_vocabularies_and_works(notes_dataset, tmp_path):
    s = run(notes_dataset, "lms", tmp_path / "stores")
    t = read_tables(s.store_path)
    assert {n: sp.kind for n, sp in t.targets.items()} == {
        "genre": "class",
        "tag": "multilabel",
        "work-id": "work",
        "pitchmidi": "frame_pitch",
        "f0multi": "frame_pitch",
        "chord": "frame_class",
    }
    ft = read_file_targets(s.store_path, ["genre", "tag", "work-id"])
    assert t.targets["genre"].vocabulary == ["folk", "jazz"] and ft["genre"].tolist() == [0, 1]
    assert t.targets["tag"].vocabulary == ["piano", "slow"] and ft["tag"].tolist() == [
        [1, 1],
        [0, 1],
    ]
    assert ft["tag"].dtype == np.uint8
    assert t.targets["work-id"].vocabulary == ["7"] and ft["work-id"].tolist() == [0, 0]
    chord = read_target(s.store_path, "chord")
    times = np.arange(int(t.n_frames[0])) * 1024 / SR
    voc = t.targets["chord"].vocabulary
    # half-open segments: a chord from 0 s labels frame 0; the next one starts at its start
    expected = np.where(times < 1.0, voc.index("C:maj"), voc.index("G:maj"))
    assert np.array_equal(chord[: len(times)], expected)
    # lms has no pitch axis: pitch targets use a 128-MIDI grid
    p = read_target(s.store_path, "pitchmidi")
    assert (
        p.shape[1] == 128
        and p[: len(times), 60].astype(bool).tolist() == ((times >= 0.5) & (times < 1.5)).tolist()
    )


@pytest.mark.slow
def test_store_layout_and_features_equal_direct_computation(notes_dataset, tmp_path):
    s = run(notes_dataset, "hcqt", tmp_path / "stores", jobs=2)
    assert s.store_path.parent == tmp_path / "stores" / "notes"
    assert s.store_path.name.startswith("hcqt-") and s.store_path.suffix == ".h5"
    t = read_tables(s.store_path)
    # the view holds no feature bytes: its features are a virtual dataset over one segment,
    # which is contiguous, uncompressed, time-major
    (segment,) = t.segments
    assert segment.path.parent.parent == tmp_path / "stores" / "pool"
    with h5py.File(s.store_path) as h:
        assert h["features"].is_virtual and h["features"].shape == (t.total_frames, 6, 360)
        attrs = dict(h.attrs)
    with h5py.File(segment.path) as h:
        d = h["features"]
        assert d.chunks is None and d.compression is None and d.dtype == np.dtype("<f4")
        assert d.shape[1:] == (6, 360) and d.id.get_offset() == segment.features_at
    assert s.store_path.stat().st_size < segment.path.stat().st_size / 5
    assert json.loads(attrs["feature"])["kind"] == "hcqt" and attrs["format_version"] == 4
    assert "patch_hop" not in json.loads(attrs["feature"])  # patches belong to the Dataset
    assert {"librosa", "numpy", "h5py"} <= set(json.loads(attrs["versions"]))
    feats = read_features(s.store_path)
    f = make_feature("hcqt")
    coll_paths = [notes_dataset.parent / "audio" / n for n in ("a.wav", "b.wav")]
    for i, p in enumerate(coll_paths):
        X = f.compute(load_audio(p, sr=22050).y)
        got = np.asarray(feats[t.offset[i] : t.offset[i] + t.n_frames[i]]).transpose(1, 2, 0)
        np.testing.assert_array_equal(got, X)
    assert verify(s.store_path) == []
    # the same request finds the store at once; a changed parameter makes another
    again = run(notes_dataset, "hcqt", tmp_path / "stores")
    assert again.existed and again.store_path == s.store_path
    other = make_plan(notes_dataset, make_feature("hcqt", {"hop_length": 256}), tmp_path / "stores")
    assert other.store_path != s.store_path


def test_hcqt_pitch_targets_line_up_with_every_harmonic_channel(notes_dataset, tmp_path):
    # shared octaves (the default): the annotated note is at its bin in channel h = 1, an octave
    # lower in channel 2, an octave higher in channel 0.5, whatever CQT each channel came from
    s = run(notes_dataset, "hcqt", tmp_path / "stores")
    t = read_tables(s.store_path)
    feats = read_features(s.store_path)
    pitch = read_target(s.store_path, "pitchmidi")
    n = int(t.n_frames[0])
    frames, bins = np.nonzero(pitch[:n])
    assert set(bins.tolist()) == {(60 - 24) * 5, (67 - 24) * 5}
    for shift, channel in ((60, 0), (0, 1), (-60, 2)):  # harmonics 0.5, 1, 2
        inner = [f for f in frames if pitch[f - 4 : f + 5].sum() == 9]  # away from note edges
        peak = feats[inner, channel].argmax(axis=1)
        expected = np.array([np.nonzero(pitch[f])[0][0] for f in inner]) + shift
        assert np.array_equal(peak, expected), channel


def _tables(path):
    with h5py.File(path) as h:
        out = {}
        h.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
        return out


# where a view finds its rows in the pool: another build history puts them elsewhere
WHERE = ("segments/path", "segments/features_at", "segments/frames", "files/segment", "files/first")


def _assert_same_store(a, b):
    """Byte for byte, or else the same arrays (features read through the view) wherever their
    rows are in the pool; on a difference, name the first dataset that differs."""
    if Path(a).read_bytes() == Path(b).read_bytes():
        return
    ta, tb = _tables(a), _tables(b)
    for k in WHERE:
        ta.pop(k), tb.pop(k)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert np.array_equal(ta[k], tb[k], equal_nan=ta[k].dtype.kind == "f"), k
    assert not np.isnan(ta["features"]).any(), "a segment is missing (read as NaN)"


def _many(tmp_path, n=16, seconds=2.0):
    entries = []
    for i in range(n):
        write_wav(tmp_path / "audio" / f"f{i:02d}.wav", tone(48 + i, seconds))
        entries.append(
            {
                "filepath": [{"value": f"audio/f{i:02d}.wav"}],
                "genre": [{"value": ["folk", "jazz"][i % 2]}],
                "pitchmidi": [{"time": 0.1, "duration": 1.0, "value": 48 + i}],
            }
        )
    return write_json(tmp_path / "many.pyjama", {"collection": {"entry": entries}})


def _cli(ds, stores, *extra):
    return [
        sys.executable, "-m", "precompute", "run", "--dataset", str(ds), "--feature", "hcqt",
        "--stores", str(stores), "-q", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_stops_and_a_rerun_continues_to_the_identical_store(tmp_path):
    ds = _many(tmp_path)
    ref = run(ds, "hcqt", tmp_path / "ref")
    stores = tmp_path / "stores"
    plan = make_plan(ds, "hcqt", stores)
    with open(tmp_path / "stderr.txt", "w") as err:
        # Ctrl-C's default action in the child even where this suite was started with SIGINT
        # ignored (a shell's background job): Python keeps an inherited SIG_IGN
        proc = subprocess.Popen(
            _cli(ds, stores, "-j", "1"), stdout=subprocess.DEVNULL, stderr=err,
            env=pause_env("file_done", 1, tmp_path),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        # the build waits after its first file, so the signal lands in mid-build on any machine
        wait_for(lambda: (tmp_path / "file_done.paused").exists(), proc, "the first file was done")
        assert done_markers(stores)
        proc.send_signal(signal.SIGINT)
        assert proc.wait() == 130  # documented in `precompute run --help`
    said = (tmp_path / "stderr.txt").read_text()
    assert "interrupted: the files finished are kept; continue with: " in said, said
    assert f"run --dataset {ds}" in said, said
    assert "precompute gc" in said, said  # how an abandoned .partial segment goes
    assert done_markers(stores) and partial_segments(stores)
    assert not plan.store_path.exists(), "the run was not interrupted mid-way"
    res = subprocess.run(_cli(ds, stores), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(plan.store_path)
    assert "from the interrupted run" in res.stdout
    _assert_same_store(plan.store_path, ref.store_path)
    assert not done_markers(stores) and not partial_segments(stores)
    assert not plan.lock_path.exists() and not list(plan.pool.glob("*.lock"))


def test_a_second_run_refuses_or_waits_naming_the_holder(notes_dataset, tmp_path):
    stores = tmp_path / "stores"
    plan = make_plan(notes_dataset, "lms", stores)
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; from precompute.lock import StoreLock\n"
            "with StoreLock(sys.argv[1]):\n print('held', flush=True)\n"
            " while not os.path.exists(sys.argv[2]): time.sleep(0.01)",
            str(plan.lock_path),
            str(release),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [
            "run",
            "--dataset",
            str(notes_dataset),
            "--feature",
            "lms",
            "--stores",
            str(stores),
            "-q",
        ]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 3
        assert f"pid {holder.pid} on {os.uname().nodename}" in res.output
        assert "being built by another precompute" in res.output
        with pytest.raises(LockedError), StoreLock(plan.lock_path):
            pass
        # --wait: says whom it waits for, waits until the holder lets go, then builds
        waiter = subprocess.Popen(
            [sys.executable, "-m", "precompute", *args, "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = "-"
        while line and "waiting for" not in line:
            line = waiter.stderr.readline()
        assert f"waiting for pid {holder.pid}" in line, line
        assert waiter.poll() is None  # still waiting: the holder has not let go
        release.touch()
        out, err = waiter.communicate()
        assert waiter.returncode == 0, err
        assert out.strip().splitlines()[-1] == str(plan.store_path)
    finally:
        holder.kill()
        holder.wait()
    # a holder that dies releases the lock with it: nothing to clean up
    dead = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; from precompute.lock import StoreLock\n"
         "with StoreLock(sys.argv[1]): os.kill(os.getpid(), 9)", str(tmp_path / "x.h5.lock")]
    )  # fmt: skip
    dead.wait()
    with StoreLock(tmp_path / "x.h5.lock"):
        pass


def test_bad_input_is_reported_by_name_and_the_rest_is_computed(tmp_path):
    a = tmp_path / "audio"
    write_wav(a / "good.wav", tone(60, 4.0))
    write_wav(a / "stereo44.wav", np.stack([tone(60, 4.0, sr=44100)] * 2, 1), sr=44100)
    write_wav(a / "short.wav", tone(60, 0.5))
    write_wav(a / "late.wav", tone(60, 4.0))
    (a / "empty.wav").write_bytes(b"")
    (a / "random.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(a / "header.wav", np.zeros(0, dtype=np.float32), SR)
    sf.write(a / "nan.wav", np.array([0.1, np.nan] * 2000, dtype=np.float32), SR, subtype="FLOAT")
    (a / "notes.txt").write_text("not audio at all\n")

    def e(fp, genre="folk", **kw):
        return {"filepath": [{"value": fp}], "genre": [{"value": genre}], **kw}

    doc = {
        "collection": {
            "descriptiondefinition": {"genre": GENRES},
            "entry": [
                e("audio/good.wav"),
                e("audio/stereo44.wav"),
                e("audio/short.wav"),
                e("audio/late.wav", pitchmidi=[{"time": 3.5, "duration": 2.0, "value": 60}]),
                e("audio/missing.wav"),
                e("audio/empty.wav"),
                e("audio/random.wav"),
                e("audio/header.wav"),
                e("audio/nan.wav"),
                e("audio/notes.txt"),
                e("audio/good.wav", genre="jazz"),
                e("audio/good.wav", genre="metal"),
                {"genre": [{"value": "folk"}]},
            ],
        }
    }
    ds = write_json(tmp_path / "bad.pyjama", doc)
    args = [
        "run",
        "--dataset",
        str(ds),
        "--feature",
        "lms",
        "--stores",
        str(tmp_path / "stores"),
        "-q",
    ]
    res = CliRunner().invoke(main, args)
    out = res.output
    assert res.exit_code == 1, out
    expected = [
        "audio/missing.wav: file not found",
        "audio/empty.wav: empty file (0 bytes)",
        "audio/random.wav: cannot decode (unsupported or corrupt audio",
        "audio/header.wav: has a header but no samples",
        "audio/nan.wav: contains NaN or Inf samples",
        "audio/notes.txt: cannot decode (unsupported or corrupt audio: libsndfile does not recognise this .txt file)",
        "entry 10 (audio/good.wav): duplicate filepath, already used by entry 0",
        "entry 11 (audio/good.wav): 'genre' atom 0: label 'metal' is not in the definition's dictionary",
        "entry 12: entry has no 'filepath'",
        "entry 2 (audio/short.wav): shorter than one patch (11 < 64 frames): kept, 0 patches",
        "entry 3 (audio/late.wav): 'pitchmidi': 1 annotation(s) end past the audio (4.00 s), clipped",
    ]
    for line in expected:
        assert line in out, line
    assert "Traceback" not in out
    assert "4 files done, 6 failed, 3 skipped" in out
    store = out.strip().splitlines()[-1]
    t = read_tables(store)
    assert [str(n) for n in t.names] == [
        "audio/good.wav",
        "audio/stereo44.wav",
        "audio/short.wav",
        "audio/late.wav",
    ]
    assert t.n_frames[2] < 64 and verify(store) == []
    # --strict stops at the first problem and writes no store
    res = CliRunner().invoke(
        main, [*args[:-3], "--stores", str(tmp_path / "strict"), "--strict", "-q"]
    )
    assert res.exit_code == 2 and "duplicate filepath" in res.output
    assert not list((tmp_path / "strict").rglob("*.h5"))


def test_strict_stops_at_first_bad_audio(tmp_path):
    write_wav(tmp_path / "ok.wav", tone(60, 1.0))
    doc = {
        "collection": {
            "entry": [{"filepath": [{"value": "missing.wav"}]}, {"filepath": [{"value": "ok.wav"}]}]
        }
    }
    ds = write_json(tmp_path / "d.pyjama", doc)
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--dataset",
            str(ds),
            "--feature",
            "lms",
            "--stores",
            str(tmp_path / "s"),
            "--strict",
            "-q",
        ],
    )
    assert (
        res.exit_code == 2
        and "missing.wav: file not found" in res.output
        and "stopped (--strict)" in res.output
    )
    assert not list((tmp_path / "s").glob("*/*.h5"))  # no store


def test_verify_finds_a_damaged_store(notes_dataset, tmp_path):
    s = run(notes_dataset, "lms", tmp_path / "stores")
    with h5py.File(s.store_path, "r+") as h:
        h["files/offset"][1] += 3
        h["features"][5, 0, 0] = np.nan  # through the view, into its segment
    faults = verify(s.store_path)
    assert any("offsets" in f for f in faults)
    assert any(f.startswith("audio/a.wav: its rows differ from their checksum") and "1 NaN" in f
               for f in faults), faults  # fmt: skip
    res = CliRunner().invoke(main, ["verify", str(s.store_path)])
    assert res.exit_code == 1


def test_info_and_show(notes_dataset, tmp_path):
    s = run(notes_dataset, "cqt", tmp_path / "stores")
    res = CliRunner().invoke(main, ["info", str(s.store_path)])
    assert res.exit_code == 0
    info = json.loads(res.output)
    assert (
        info["files"] == 2
        and info["frame_shape"] == [1, 360]
        and info["targets"]["tag"]["kind"] == "multilabel"
    )
    png = tmp_path / "a.png"
    res = CliRunner().invoke(main, ["show", str(s.store_path), "--file", "a.wav", "-o", str(png)])
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 10_000


def test_segments_are_half_open_at_the_start_and_at_the_end_of_a_file(tmp_path):
    from common.pyjama import read_pyjama
    from common.targets import frame_runs

    write_wav(tmp_path / "a.wav", tone(60, 2.0))
    n = 1 + int(2.0 * SR) // 512
    end = (n - 1) * 512 / SR  # the time of the last frame
    doc = {
        "collection": {
            "entry": [
                {
                    "filepath": [{"value": "a.wav"}],
                    "chord": [
                        {"time": 0.0, "duration": 0.5, "value": "C"},  # from the first frame
                        {"time": end, "duration": 0.5, "value": "G"},  # the last frame only
                    ],
                    "pitchmidi": [{"time": 0.0, "duration": 512 / SR, "value": 60}],
                }
            ]
        }
    }
    coll = read_pyjama(write_json(tmp_path / "d.pyjama", doc))
    feature = make_feature("cqt")
    plan = make_plan(tmp_path / "d.pyjama", feature, tmp_path / "s")
    runs = frame_runs(coll.entries[0], plan.targets, feature, n)
    chord, pitch = (s.kind_class.decode(s, (runs[s.name].start, runs[s.name].length,
                                            runs[s.name].value), [0], n)[0]
                    for s in sorted(plan.targets, key=lambda s: s.name != "chord")
                    if s.frame_level)  # fmt: skip
    times = np.arange(n) * 512 / SR
    assert chord[0] == 0 and chord[-1] == 1  # [0, 0.5) holds frame 0; [end, ..) the last one
    assert (chord[(times >= 0.5) & (times < end)] == -1).all()
    # one frame's worth of note at 0: exactly frame 0 ([0, 512 / sr) holds t = 0 only)
    assert pitch[:, (60 - 24) * 5].nonzero()[0].tolist() == [0]


def test_pitch_units_and_pitches_off_the_grid_are_reported(tmp_path):
    # an f0 track in Hz (no unit said anywhere) must not vanish; notes off the grid are counted
    write_wav(tmp_path / "a.wav", tone(69, 2.0))
    times = [round(0.01 * k, 2) for k in range(200)]
    doc = {
        "collection": {
            "entry": [
                {
                    "filepath": [{"value": "a.wav"}],
                    "f0": [{"time": times, "value": [[440.0] * 200]}],
                    "pitchmidi": [
                        {"time": 0.1, "duration": 0.5, "value": 69},
                        {"time": 0.6, "duration": 0.5, "value": 21},  # below C1 (MIDI 24)
                        {"time": 1.1, "duration": 0.5, "value": 108},  # above the grid's top
                    ],
                }
            ]
        }
    }
    ds = write_json(tmp_path / "p.pyjama", doc)
    res = CliRunner().invoke(
        main,
        ["run", "--dataset", str(ds), "--feature", "cqt", "--stores", str(tmp_path / "s"), "-q"],
    )
    assert res.exit_code == 0, res.output
    assert "'f0': pitches in Hz (from its values (up to 440, above MIDI's range))" in res.output
    assert "'pitchmidi': 1 pitch(es) below and 1 above the grid of this feature" in res.output
    store = res.output.strip().splitlines()[-1]
    t = read_tables(store)
    assert t.targets["f0"].unit == "hz" and t.attrs["off_grid"]["pitchmidi"] == {
        "below": 1,
        "above": 1,
    }
    f0 = read_target(store, "f0")
    assert f0[:, (69 - 24) * 5].sum() >= 85  # A4 = 440 Hz at its bin in ~all 87 frames, not dropped
    # a unit given explicitly wins, and makes another store
    res = CliRunner().invoke(
        main,
        ["run", "--dataset", str(ds), "--feature", "cqt", "--stores", str(tmp_path / "s"),
         "--pitch-unit", "f0=midi", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0 and "'f0': pitches in MIDI (from given)" in res.output
    assert res.output.strip().splitlines()[-1] != store
    bad = CliRunner().invoke(
        main, ["run", "--dataset", str(ds), "--feature", "cqt", "--pitch-unit", "f0=cents"]
    )
    assert bad.exit_code == 2 and "expected NAME=hz or NAME=midi" in bad.output


def test_progress_in_a_log_is_whole_lines(notes_dataset, tmp_path):
    """Not a terminal (CliRunner, CI, nohup): lines with counts, never carriage returns."""
    from precompute.cli import main

    args = ["run", "--dataset", str(notes_dataset), "--feature", "cqt"]
    res = CliRunner().invoke(main, [*args, "--stores", str(tmp_path / "s"), "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output
    assert "cqt: 2/2 files (100%)" in res.output


def test_line_progress_prints_every_tenth():
    import io

    from common.progress import progress

    out = io.StringIO()
    bar = progress(100, "lms", "file", file=out)
    for _ in range(100):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("lms: 10/100 files (10%)")
    assert lines[-1].startswith("lms: 100/100 files (100%)")
    quiet = io.StringIO()
    bar = progress(100, "epoch 0", "batch", leave=False, file=quiet)
    bar.update(100)
    bar.close()
    assert quiet.getvalue() == ""  # an epoch's bar: its summary line is printed by the trainer
