"""The feature pool: views that hold no features, a catalogue that is only a cache, checksums
that find a changed byte, gc that never breaks a reader, compaction, migration, fixed costs."""

from __future__ import annotations

import gc
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from common.catalogue import Catalogue, catalogue_mode, filesystem_type
from common.store import (
    StoreError,
    read_features,
    read_segment,
    read_tables,
    segment_files,
)
from precompute.cli import main
from precompute.compact import compact
from precompute.inspect import verify
from precompute.manage import collect_garbage
from precompute.migrate import migrate
from precompute.pipeline import make_plan, run
from train.data import DatasetError, StoreDataset, find_store

from .conftest import tone, write_json, write_wav
from .dense_targets import read_target
from .test_precompute import _assert_same_store
from .test_rebuild import _edit


def _dataset(root: Path, n: int = 6, name: str = "set", base: int = 48) -> Path:
    entries = []
    for i in range(n):
        rel = f"audio-{name}/f{i:02d}.wav"
        write_wav(root / rel, tone(base + i, 1.0 + 0.1 * i))
        entries.append(
            {
                "filepath": [{"value": rel}],
                "genre": [{"value": ["folk", "jazz"][i % 2]}],
                "pitchmidi": [{"time": 0.1, "duration": 0.5, "value": base + i}],
            }
        )
    return write_json(root / f"{name}.pyjama", {"collection": {"entry": entries}})


def _relabel(i: int, label: str):
    return lambda e: e[i].update(genre=[{"value": label}])


def test_a_view_holds_no_features_and_plain_h5py_reads_them_after_the_folder_moves(tmp_path):
    ds = _dataset(tmp_path)
    s = run(ds, "cqt", tmp_path / "stores")
    t = read_tables(s.store_path)
    expected = read_features(s.store_path)
    (seg,) = t.segments
    assert h5py.File(s.store_path)["features"].is_virtual  # its bytes are the segment's
    assert s.store_path.stat().st_size < 0.5 * seg.path.stat().st_size  # targets only
    shutil.move(tmp_path / "stores", tmp_path / "moved")
    view = tmp_path / "moved" / "set" / s.store_path.name
    code = textwrap.dedent(f"""
        import h5py, numpy as np, sys
        with h5py.File({str(view)!r}) as h:
            np.save(sys.stdout.buffer, h["features"][()])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd="/", check=True)
    import io

    assert np.array_equal(np.load(io.BytesIO(out.stdout)), expected)
    assert np.array_equal(read_features(view), expected)
    ds_ = StoreDataset(view)
    assert len(ds_) and ds_.features.parts[0][0].startswith(str(tmp_path / "moved"))


def test_the_catalogue_is_a_cache_rebuilt_from_the_files(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    first = run(ds, "cqt", stores)
    plan = make_plan(ds, "cqt", stores)
    cat = Catalogue(stores)
    rows = cat.find_rows(f.key for f in plan.files)
    views = [(r.path, r.pyjama_sha1, r.files) for r in cat.views()]
    (stores / "catalogue.sqlite").unlink()
    for p in stores.glob("catalogue.sqlite-*"):
        p.unlink()
    cat = Catalogue(stores)
    assert [(r.path, r.pyjama_sha1, r.files) for r in cat.views()] == views
    assert cat.find_rows(f.key for f in plan.files) == rows
    feature = make_plan(ds, "cqt", stores).feature
    assert find_store(ds, feature, stores) == first.store_path.absolute()
    (stores / "catalogue.sqlite").unlink()
    s = run(_edit(ds, _relabel(0, "jazz")), "cqt", stores)  # the same rows reused
    assert (s.computed, s.reused) == (0, 6)


def test_a_deleted_segment_names_the_files_that_are_gone_and_a_rerun_computes_them(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    run(ds, "cqt", stores)
    _edit(ds, lambda e: e.extend([{"filepath": [{"value": "audio-set/new.wav"}]}]))
    write_wav(tmp_path / "audio-set/new.wav", tone(70, 1.2))
    s = run(ds, "cqt", stores)
    ref = read_features(s.store_path)
    (added,) = [p for p in segment_files(stores) if len(read_segment(p).keys) == 1]
    added.unlink()
    with pytest.raises(
        DatasetError, match=r"the frames of 1 file\(s\) are gone \(audio-set/new.wav\)"
    ):
        StoreDataset(s.store_path)
    res = CliRunner().invoke(main, ["verify", str(s.store_path)])
    assert res.exit_code == 1 and "audio-set/new.wav" in res.output
    again = run(ds, "cqt", stores)
    assert (again.computed, again.reused, again.repaired) == (1, 6, 1)
    assert np.array_equal(read_features(again.store_path), ref)
    assert verify(again.store_path) == [] and verify(stores) == []


def test_one_flipped_byte_in_a_segment_is_found_and_named_by_its_file(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    s = run(ds, "cqt", stores)
    t = read_tables(s.store_path)
    path, at, nbytes = t.byte_range(3)
    with open(path, "r+b") as f:  # a finite value changed to another finite value
        f.seek(at + nbytes // 2)
        b = f.read(1)
        f.seek(at + nbytes // 2)
        f.write(bytes([b[0] ^ 0x01]))
    assert np.isfinite(read_features(s.store_path)).all()
    (fault,) = verify(s.store_path)
    assert fault.startswith("audio-set/f03.wav: its rows differ from their checksum")
    folder = verify(stores)
    assert any("audio-set/f03.wav: its rows differ from their checksum" in f for f in folder)
    res = CliRunner().invoke(main, ["verify", str(stores)])
    assert res.exit_code == 1 and "f03.wav" in res.output


def test_gc_of_one_view_keeps_what_the_other_needs_and_never_breaks_a_reader(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    a = run(ds, "cqt", stores).store_path
    b = run(_edit(ds, _relabel(1, "folk")), "cqt", stores).store_path
    reader = StoreDataset(a)
    for v in (a, b):
        os.utime(v, (1, 1))  # both unused for decades
    lines = []
    collect_garbage(stores, days=1, log=lines.append)
    assert a.exists() and f"kept {a}: a process is reading it" in lines
    assert not b.exists() and len(segment_files(stores)) == 1
    expected = read_features(a)
    assert np.array_equal(
        reader.file_frames("features", reader.files)[0], expected[: reader.tables.n_frames[0]]
    )
    del reader
    gc.collect()
    os.utime(a, (1, 1))
    collect_garbage(stores, days=1)
    assert not a.exists() and not segment_files(stores)


def test_compaction_rewrites_a_mostly_dead_segment_and_keeps_it_while_it_is_read(tmp_path):
    ds = _dataset(tmp_path, n=6)
    stores = tmp_path / "stores"
    old = run(ds, "cqt", stores).store_path
    # the audio of 4 files changes: their old rows live only in the old view
    for i in range(4):
        write_wav(tmp_path / f"audio-set/f{i:02d}.wav", tone(80 + i, 1.0))
    new = run(ds, "cqt", stores).store_path
    expected = read_features(new)
    os.utime(old, (1, 1))
    collect_garbage(stores, days=1)  # the old view goes: its segment is 2 of 6 files live
    (first,) = [p for p in segment_files(stores) if len(read_segment(p).keys) == 6]
    reader = StoreDataset(new)
    pitch_before = StoreDataset(new, target="pitchmidi")
    lines = []
    compact(stores, log=lines.append)
    assert any(line.startswith("rewriting pool/") and "% of its" in line for line in lines), lines
    assert first.exists(), "the segment a reader holds was removed"
    assert np.array_equal(read_features(new), expected)  # re-pointed, same bytes
    assert all(s.path != first for s in read_tables(new).segments)
    before = reader.file_frames("features", reader.files)
    assert np.array_equal(np.concatenate(before), expected)
    # the view was rewritten: a reader made before reads its own file's targets, a new one the new
    pitch = StoreDataset(new, target="pitchmidi")
    old_reader_targets = reader_targets = np.concatenate(pitch.file_frames("target", pitch.files))
    assert np.array_equal(reader_targets, read_target(new, "pitchmidi"))
    # a reader made before keeps reading the file it opened; a copy of it sent to a spawned
    # worker would open the re-pointed view at the old offsets: refused
    got = np.concatenate(pitch_before.file_frames("target", pitch_before.files))
    assert np.array_equal(got, reader_targets)
    with pytest.raises(StoreError, match="written again .* make the Dataset again"):
        pickle.loads(pickle.dumps(pitch_before))
    del reader, pitch, old_reader_targets, pitch_before
    gc.collect()
    collect_garbage(stores, days=365)
    assert not first.exists() and verify(stores) == []
    assert len(segment_files(stores)) == 2


def test_two_runs_of_different_datasets_into_one_folder_at_once_both_finish(tmp_path):
    stores = tmp_path / "stores"
    a, b = _dataset(tmp_path, n=10, name="one"), _dataset(tmp_path, n=10, name="two", base=60)
    cmd = lambda ds: [sys.executable, "-m", "precompute", "run", "--dataset", str(ds),  # noqa: E731
                      "--feature", "cqt", "--stores", str(stores), "-q"]  # fmt: skip
    procs = [subprocess.Popen(cmd(ds), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ds in (a, b)]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    cat = Catalogue(stores)
    assert len(cat.views()) == 2 and len(cat.segments()) == 2
    for ds in (a, b):
        plan = make_plan(ds, "cqt", stores)
        assert len(cat.find_rows(f.key for f in plan.files)) == 10
        assert run(ds, "cqt", stores).existed
    assert verify(stores) == []


def test_the_network_filesystem_mode_uses_no_wal_and_a_lock(tmp_path, monkeypatch):
    assert filesystem_type("/proc/self") == "proc"
    assert catalogue_mode(tmp_path) in ("local", "network")
    monkeypatch.setenv("MIRPATCH_CATALOGUE", "nfs")
    with pytest.raises(
        Exception, match="MIRPATCH_CATALOGUE='nfs': expected one of auto, local, network"
    ):
        catalogue_mode(tmp_path)
    monkeypatch.setenv("MIRPATCH_CATALOGUE", "network")
    stores = tmp_path / "stores"
    a, b = _dataset(tmp_path, name="one"), _dataset(tmp_path, name="two", base=60)
    cmd = lambda ds: [sys.executable, "-m", "precompute", "run", "--dataset", str(ds),  # noqa: E731
                      "--feature", "cqt", "--stores", str(stores), "-q"]  # fmt: skip
    procs = [subprocess.Popen(cmd(ds), stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL)
             for ds in (a, b)]  # fmt: skip
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()
    mode = sqlite3.connect(stores / "catalogue.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("delete",) and not (stores / "catalogue.sqlite-wal").exists()
    assert (stores / "catalogue.lock").exists()
    assert len(Catalogue(stores).views()) == 2 and verify(stores) == []
    monkeypatch.setenv("MIRPATCH_CATALOGUE", "local")
    assert len(Catalogue(stores).views()) == 2  # the same cache read in the other mode


def _to_format_2(view: Path) -> None:
    """Rewrite a view as the format-2 store that mirpatch wrote before the pool (features in
    the file, a status and an error per file), as users have them on disk."""
    t = read_tables(view)
    feats = read_features(view)
    with h5py.File(view) as h:
        attrs_of = {n: dict(x.attrs) for n, x in h["targets"].items()}
        targets = {
            n: (read_target(view, n), {k: v for k, v in a.items() if k != "frames"})
            for n, a in attrs_of.items()
        }  # fmt: skip (format 2 held dense rows)
        marks = {n: ds[()] for n, ds in h["annotated"].items()}
        attrs = dict(h.attrs)
    tmp = view.with_name("old.h5")
    with h5py.File(tmp, "w") as h:
        h.create_dataset("features", data=feats)
        s = h5py.string_dtype("utf-8")
        for col, data in {"name": t.names, "content": t.content, "key": t.keys}.items():
            h.create_dataset(f"files/{col}", data=data.tolist(), dtype=s)
        for col in ("entry", "offset", "n_frames", "duration_s", "orig_sr"):
            h.create_dataset(f"files/{col}", data=getattr(t, col))
        h.create_dataset("files/status", data=np.ones(t.n_files, np.uint8))
        h.create_dataset("files/error", data=np.zeros(t.n_files, "S256"))
        for n, (data, a) in targets.items():
            h.create_dataset(f"targets/{n}", data=data).attrs.update(a)
        for n, m in marks.items():
            h.create_dataset(f"annotated/{n}", data=m)
        h.attrs.update({k: v for k, v in attrs.items() if k != "role"})
        h.attrs["format_version"] = 2
    os.replace(tmp, view)


def test_a_format_2_store_is_refused_with_the_command_and_migrates_without_computing(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    view = run(ds, "cqt", stores).store_path
    expected, targets = read_features(view), h5py.File(view)["targets/genre"][()]
    _to_format_2(view)
    shutil.rmtree(stores / "pool")
    (stores / "catalogue.sqlite").unlink()
    with pytest.raises(DatasetError, match=rf"format 2, .*precompute migrate {stores}"):
        StoreDataset(view)
    res = CliRunner().invoke(main, ["ls", str(stores)])
    assert f"precompute migrate {stores}" in res.output
    res = CliRunner().invoke(main, ["migrate", str(stores)])
    assert res.exit_code == 0 and "1 store(s) migrated" in res.output, res.output
    assert np.array_equal(read_features(view), expected)
    assert np.array_equal(h5py.File(view)["targets/genre"][()], targets)
    assert verify(view) == [] and verify(stores) == []
    s = run(ds, "cqt", stores)
    assert s.computed == 0
    _assert_same_store(s.store_path, view)


def test_an_interrupted_migration_keeps_its_segments_and_finishes_on_a_rerun(tmp_path, monkeypatch):
    from precompute import migrate as mig

    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    view = run(ds, "cqt", stores).store_path
    expected = read_features(view)
    _to_format_2(view)
    shutil.rmtree(stores / "pool")

    def die(*a, **k):
        raise KeyboardInterrupt  # after the rows were moved and freed, before the view

    monkeypatch.setattr(mig, "_write", die)
    with pytest.raises(KeyboardInterrupt):
        migrate(stores)
    monkeypatch.undo()
    assert (view.parent / (view.name + ".migrating")).is_file()
    collect_garbage(stores, days=0)  # the segments no view needs yet are kept
    assert segment_files(stores)
    assert migrate(stores) == [view]
    assert np.array_equal(read_features(view), expected) and verify(stores) == []
    assert not (view.parent / (view.name + ".migrating")).exists()


def test_a_segment_sealed_but_not_yet_in_a_view_is_kept_by_gc(tmp_path):
    from precompute import seal as seal_module

    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    real, seen = seal_module.seal, {}

    def seal_then_gc(build, catalogue):  # gc runs the moment a build has sealed its segment
        held = real(build, catalogue)
        collect_garbage(stores, days=0)
        seen["kept"] = build.final.exists()
        return held

    seal_module.seal, saved = seal_then_gc, seal_module.seal
    from precompute import pipeline

    pipeline.seal = seal_then_gc
    try:
        s = run(ds, "cqt", stores)
    finally:
        seal_module.seal = pipeline.seal = saved
    assert seen["kept"] and verify(s.store_path) == []


def _importtime(args: list[str]) -> str:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "precompute", *args],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stderr


@pytest.mark.slow
def test_a_run_that_computes_nothing_starts_no_worker_nor_imports_librosa_or_torch(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    run(ds, "cqt", stores)
    args = [
        "run",
        "--dataset",
        str(ds),
        "--feature",
        "cqt",
        "--stores",
        str(stores),
        "-j",
        "2",
        "-q",
    ]
    for extra in ([], ["--set", "patch_hop=8"]):  # a no-op, another hop
        imports = _importtime(args + extra)
        assert not any(m in imports for m in ("| librosa", "| torch", "| joblib")), extra
    _edit(ds, _relabel(2, "jazz"))  # a label edit
    imports = _importtime(args)
    assert not any(m in imports for m in ("| librosa", "| torch", "| joblib"))
    # one file changed: one worker started for it (whose imports overlap the view's drafting)
    write_wav(tmp_path / "audio-set/f01.wav", tone(90, 1.0))
    s = run(ds, "cqt", stores, jobs=2)
    assert (s.computed, s.workers) == (1, 1)
    assert len(set(s.peak_rss_mb) - {os.getpid()}) == 1  # results came from one other process


@pytest.mark.slow
def test_memory_does_not_grow_with_100000_files_in_20_segments(tmp_path):
    code = textwrap.dedent(f"""
        import gc, os, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.pool_fixture import many_files_view, rss_mb
        from train.data import StoreDataset, collate
        view = many_files_view({str(tmp_path)!r}, int(sys.argv[1]), 20)
        gc.collect()
        before = rss_mb()
        ds = StoreDataset(view, patch_frames=4, patch_hop=4)
        for s in range(0, len(ds), 4096):
            b = collate(ds.__getitems__(list(range(s, min(s + 4096, len(ds))))))
        fds = len(os.listdir("/proc/self/fd"))
        print(len(ds), rss_mb() - before, len(ds.features._fds), fds)
    """)
    out = {}
    for n in (1000, 100_000):
        res = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        patches, grew, segment_fds, _ = res.stdout.split()
        out[n] = (int(patches), float(grew), int(segment_fds))
    assert out[100_000][0] == 100_000 and out[100_000][2] == 20  # each segment opened once
    # what grows is the tables (numpy, tens of bytes a file), nothing per file or per segment
    assert out[100_000][1] - out[1000][1] < 40, out


def test_a_run_of_a_built_store_reads_no_pyjama_and_sees_changed_audio(tmp_path, monkeypatch):
    """A no-op finds its view by the pyjama's sha1 and the audio's size and mtime, without
    reading the pyjama (seconds for a real dataset's notes); audio touched since is looked at."""
    from common.pyjama import read as reader

    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    first = run(ds, "lms", stores)

    def no_parse(*a, **kw):
        raise AssertionError("the pyjama was read")

    monkeypatch.setattr(reader, "parse_pyjama", no_parse)
    again = run(ds, "lms", stores)
    assert again.existed and again.store_path == first.store_path and again.files == first.files
    res = CliRunner().invoke(main, ["run", "--dataset", str(ds), "--feature", "lms", "--stores",
                                    str(stores), "-q"])  # fmt: skip
    assert res.exit_code == 0 and res.output.strip().splitlines()[-1] == str(first.store_path)
    monkeypatch.undo()
    audio = sorted((tmp_path / "audio-set").glob("*.wav"))[0]
    os.utime(audio, ns=(audio.stat().st_atime_ns, audio.stat().st_mtime_ns + 10**9))
    calls = []
    real = reader.parse_pyjama
    monkeypatch.setattr(reader, "parse_pyjama", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    third = run(ds, "lms", stores)  # planned again; the content is the same: the same store
    assert calls and third.existed and third.store_path == first.store_path
