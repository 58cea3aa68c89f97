"""Frame-level targets stored as runs give back, for every window a reader asks for, exactly the
dense rows mirpatch stored before (format 3), and a view's size follows its annotations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.features import make_feature
from common.pyjama import Atom, Description
from common.targets import MAX_RUN, Runs, TargetSpec
from common.targets.runs import runs_of_multi_hot, runs_of_sequence, runs_of_values
from precompute.pipeline import run
from train.data import StoreDataset

from .conftest import tone, write_json, write_wav
from .dense_targets import dense_target, frame_targets

FEATURE = make_feature("cqt")
GRID = FEATURE.pitch_midi().tolist()


def _atom(value, time=None, duration=None):
    return Atom(value=value, time=time, duration=duration)


def _random_description(kind: str, rng: np.random.Generator, seconds: float) -> Description:
    """Annotations as real files have them: overlapping notes (some silent, some off the grid,
    some past the end), f0 tracks with unvoiced stretches, markers, overlapping segments."""
    n = int(rng.integers(1, 40))
    t = np.sort(rng.uniform(0, seconds + 0.3, n))
    d = rng.exponential(0.4, n) * (rng.random(n) < 0.9)  # some of zero length
    track = kind in ("frame_pitch", "frame_value") and rng.random() < 0.5
    if kind == "frame_pitch" and track:
        times = np.round(np.arange(0, seconds, 0.01), 2)
        rows = rng.choice([0.0, 48.0, 48.4, 60.2, 72.0, np.nan], size=(3, len(times)))
        rows = np.repeat(rows[:, ::25], 25, axis=1)[:, : len(times)]  # held pitches
        atoms = [_atom(rows.tolist(), times.tolist())]
    elif kind == "frame_pitch":
        atoms = [_atom(float(rng.choice([0, -3, 10, 130, *range(30, 90)])), a, b)
                 for a, b in zip(t, d)]  # fmt: skip
    elif kind == "frame_class":
        atoms = [_atom(str(rng.choice(["C", "G", "Am"])), a, b) for a, b in zip(t, d)]
    elif kind == "frame_events":
        atoms = [_atom(str(rng.choice(["beat", "down"])), a) for a in t]
    elif track:
        times = np.round(np.arange(0, seconds, 0.05), 2)
        vals = np.repeat(rng.normal(size=(2, len(times) // 4 + 1)), 4, axis=1)[:, : len(times)]
        atoms = [_atom(vals.tolist(), times.tolist())]
    else:
        atoms = [_atom(float(rng.normal()), a, b) for a, b in zip(t, d)]
    extent = "breakpoint" if track else "marker" if kind == "frame_events" else "segment"
    content = "text" if kind in ("frame_class", "frame_events") else "numeric"
    return Description(SPECS[kind].name, extent, content, atoms)


SPECS = {
    "frame_pitch": TargetSpec("p", "frame_pitch", pitch_midi=GRID, unit="midi"),
    "frame_class": TargetSpec("c", "frame_class", ["C", "G", "Am"]),
    "frame_events": TargetSpec("e", "frame_events", ["beat", "down"]),
    "frame_value": TargetSpec("v", "frame_value", ["a", "b"]),
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_runs_of_random_annotations_decode_to_the_dense_rows_of_format_3(kind):
    rng = np.random.default_rng(len(kind))
    spec = SPECS[kind]
    for trial in range(25):
        seconds = float(rng.uniform(0.5, 12.0))
        n = FEATURE.n_frames(int(seconds * FEATURE.sr))
        desc = _random_description(kind, rng, seconds)
        entry = SimpleNamespace(descriptions={spec.name: desc})
        dense = frame_targets(entry, [spec], FEATURE, n)[spec.name]
        times, frame_s = FEATURE.frame_times(n), FEATURE.hop_length / FEATURE.sr
        runs = spec.kind_class.encode_runs(spec, desc, times, frame_s).shifted(1000)
        assert np.all(np.diff(runs.start) >= 0) and (runs.length >= 1).all()
        assert (runs.length <= MAX_RUN).all()
        cols = (runs.start, runs.length, runs.value)
        whole = spec.kind_class.decode(spec, cols, [1000], n)[0]
        np.testing.assert_array_equal(whole, dense, err_msg=f"{kind} trial {trial}")
        # every window a batch may ask for, among others that run past the file's ends
        L = int(rng.integers(1, 300))
        starts = np.unique(np.r_[0, rng.integers(0, max(1, n - L + 1), 20), max(0, n - L)])
        got = spec.kind_class.decode(spec, cols, starts + 1000, L)
        padded = np.concatenate([dense, np.repeat(whole[:0], L, axis=0)])[: n + L]
        for k, s in enumerate(starts):
            want = padded[s : s + L]
            np.testing.assert_array_equal(got[k][: len(want)], want)
        # stores of older formats, converted from their dense rows, give the same runs' rows
        again = spec.kind_class.runs_of_dense(spec, dense).shifted(1000)
        np.testing.assert_array_equal(
            spec.kind_class.decode(spec, (again.start, again.length, again.value), [1000], n)[0],
            dense,
        )


def test_run_helpers_split_long_runs_and_leave_the_background_out():
    seq = np.r_[np.full(600, 3), np.full(5, -1), np.full(2, 7)]
    r = runs_of_sequence(seq, -1)
    assert r.start.tolist() == [0, 256, 512, 605] and r.length.tolist() == [256, 256, 88, 2]
    assert r.value.tolist() == [3, 3, 3, 7]
    rows = np.full((10, 2), np.nan, np.float32)
    rows[2:6] = [1.0, np.nan]
    assert runs_of_values(rows).start.tolist() == [2] and runs_of_values(rows).length.tolist() == [
        4
    ]
    hot = np.zeros((9, 4), np.uint8)
    hot[1:4, 2] = hot[3:9, 0] = 1
    r = runs_of_multi_hot(hot)
    assert sorted(zip(r.start.tolist(), r.length.tolist(), r.value.tolist())) == [
        (1, 3, 2), (3, 6, 0)]  # fmt: skip
    assert len(Runs.concat([])) == 0


@pytest.mark.parametrize("feature", ["lms", "cqt"])
def test_every_item_of_a_store_has_the_dense_targets_of_format_3(tiny_stores, feature):
    store = next(tiny_stores.rglob(f"{feature}-*.h5"))
    for name in ("pitchmidi", "f0multi"):
        dense = dense_target(store, name)
        ds = StoreDataset(store, unit="patch", target=name, split=None, patch_hop=7)
        t = ds.tables
        idx = np.arange(len(ds))
        for lo in range(0, len(ds), 256):  # every patch, in batches and as single items
            chunk = idx[lo : lo + 256].tolist()
            batch = torch.utils.data.default_collate(ds.__getitems__(chunk))["y"]
            for k, i in enumerate(chunk):
                o = t.offset[ds.patch_file[i]] + ds.patch_start[i]
                np.testing.assert_array_equal(batch[k].numpy(), dense[o : o + 64].T)
        for i in (0, len(ds) // 2, len(ds) - 1):
            o = t.offset[ds.patch_file[i]] + ds.patch_start[i]
            np.testing.assert_array_equal(ds[i]["y"].numpy(), dense[o : o + 64].T)
        files = StoreDataset(store, unit="file", target=name, split=None)
        whole = StoreDataset(store, unit="file", target=name, split=None, whole_file=True)
        for k in range(len(files)):
            f = files.files[k]
            o, n = t.offset[f], t.n_frames[f]
            item = files[k]
            for j, s in enumerate(item["start"].tolist()):
                np.testing.assert_array_equal(item["y"][j].numpy(), dense[o + s : o + s + 64].T)
            np.testing.assert_array_equal(whole[k]["y"].numpy(), dense[o : o + n].T)
            np.testing.assert_array_equal(files.file_frames("target", [f])[0], dense[o : o + n])


def test_a_views_size_follows_its_annotations_not_the_length_of_its_audio(tmp_path):
    """The same notes over 4 s and over 40 s of audio: the view does not grow with the frames
    (it did by 360 bytes a frame per pitch target, 1.4 MB per minute)."""
    sizes = {}
    for seconds in (4.0, 40.0):
        folder = tmp_path / f"s{int(seconds)}"
        entries = []
        for i in range(3):
            write_wav(folder / f"a{i}.wav", tone(60 + i, seconds))
            notes = [{"time": 0.2 * k, "duration": 0.3, "value": 55 + k % 12} for k in range(15)]
            entries.append({"filepath": [{"value": f"a{i}.wav"}], "pitchmidi": notes})
        ds = write_json(folder / "d.pyjama", {"collection": {"entry": entries}})
        sizes[seconds] = run(ds, "cqt", folder / "stores").store_path.stat().st_size
    assert sizes[40.0] < 1.1 * sizes[4.0], sizes


def test_a_view_of_format_3_is_refused_with_the_command_that_writes_it_again(tmp_path):
    import sqlite3

    from click.testing import CliRunner

    from common.store import read_tables
    from precompute.cli import main
    from precompute.pipeline import make_plan

    from .dense_targets import to_format_3

    write_wav(tmp_path / "a.wav", tone(60, 2.0))
    doc = {"filepath": [{"value": "a.wav"}], "pitchmidi": [{"time": 0.1, "duration": 1.0,
                                                            "value": 60}]}  # fmt: skip
    ds = write_json(tmp_path / "d.pyjama", {"collection": {"entry": [doc]}})
    stores = tmp_path / "stores"
    f16 = make_feature("cqt", {"dtype": "float16"})
    built = run(ds, f16, stores).store_path
    # a view of format 3, under the name format 3 gave it, and the catalogue as a mirpatch of
    # format 3 left it (its schema 3)
    to_format_3(built)
    old = built.with_name("cqt-0123456789abcdef.h5")
    built.rename(old)
    with sqlite3.connect(stores / "catalogue.sqlite") as con:
        con.execute("UPDATE meta SET v = '3' WHERE k = 'schema'")
        hashed = con.execute("SELECT count(*) FROM audio").fetchone()[0]
    hint = f"--feature cqt --set dtype=float16 --stores {stores}"
    with pytest.raises(Exception, match="a view of format 3") as e:
        read_tables(old)
    assert "--set dtype=float16" in str(e.value)
    res = CliRunner().invoke(main, ["ls", str(stores)])
    assert hint in res.output, res.output
    # the command a user is given writes a view of this format, computing nothing
    s = run(ds, f16, stores)
    assert s.computed == 0 and s.store_path == built == make_plan(ds, f16, stores).store_path
    assert read_tables(built).targets["pitchmidi"].kind == "frame_pitch"
    res = CliRunner().invoke(main, ["gc", str(stores), "--older-than", "0"])
    assert "a view of format 3" in res.output and not old.exists()
    with sqlite3.connect(stores / "catalogue.sqlite") as con:  # the audio hashes carried over
        assert con.execute("SELECT count(*) FROM audio").fetchone()[0] == hashed == 1
