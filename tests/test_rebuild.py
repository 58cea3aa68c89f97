"""Stores that are reused: rebuilds compute what changed and nothing else, byte-identical to a
fresh build; kills, full disks and concurrent runs lose nothing; the catalogue finds stores."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from common.catalogue import Catalogue
from common.features import make_feature
from common.pause import pause_env
from common.store import StoreError, read_features, read_segment, read_tables, segment_files
from precompute import layout
from precompute.cli import main
from precompute.inspect import verify, verify_folder
from precompute.lock import StoreLock
from precompute.pipeline import make_plan, run
from train.data import DatasetError, StoreDataModule, StoreDataset

from .conftest import done_markers, partial_segments, tone, wait_for, write_json, write_wav
from .dense_targets import read_target
from .test_precompute import _assert_same_store


def _dataset(root: Path, n: int = 8, seconds: float = 1.0, name: str = "set") -> Path:
    entries = []
    for i in range(n):
        write_wav(root / "audio" / f"f{i:02d}.wav", tone(48 + i, seconds + 0.1 * i))
        entries.append(
            {
                "filepath": [{"value": f"audio/f{i:02d}.wav"}],
                "genre": [{"value": ["folk", "jazz"][i % 2]}],
                "pitchmidi": [{"time": 0.1, "duration": 0.5, "value": 48 + i}],
            }
        )
    return write_json(root / f"{name}.pyjama", {"collection": {"entry": entries}})


def _edit(ds: Path, fn) -> Path:
    doc = json.loads(ds.read_text())
    fn(doc["collection"]["entry"])
    ds.write_text(json.dumps(doc))
    return ds


def _features(store: Path) -> np.ndarray:
    return read_features(store)


def _pool_bytes(stores: Path) -> int:
    return sum(p.stat().st_size for p in segment_files(stores))


@pytest.mark.slow
def test_rebuilds_compute_only_what_changed_and_equal_a_fresh_build(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    first = run(ds, "cqt", stores)
    assert (first.computed, first.reused) == (8, 0)
    pool = _pool_bytes(stores)

    def fresh(label):  # the same request from scratch, in a stores folder of its own
        return run(ds, "cqt", tmp_path / f"fresh-{label}").store_path

    # one label edited: nothing computed, no feature byte written, targets follow the edit
    _edit(ds, lambda e: e[3].update(genre=[{"value": "folk"}]))
    s = run(ds, "cqt", stores)
    assert (s.computed, s.reused) == (0, 8) and s.store_path != first.store_path
    assert _pool_bytes(stores) == pool and len(segment_files(stores)) == 1
    assert np.array_equal(_features(s.store_path), _features(first.store_path))
    assert read_target(s.store_path, "genre")[3] == 0
    _assert_same_store(s.store_path, fresh("label"))

    # a file renamed in the dataset, same audio: nothing computed
    shutil.copy(tmp_path / "audio/f02.wav", tmp_path / "audio/renamed.wav")
    _edit(ds, lambda e: e[2].update(filepath=[{"value": "audio/renamed.wav"}]))
    s = run(ds, "cqt", stores)
    assert (s.computed, s.reused) == (0, 8) and _pool_bytes(stores) == pool

    # 10 % more files: only the new ones computed, into a segment holding only them
    write_wav(tmp_path / "audio/new.wav", tone(70, 1.3))
    _edit(
        ds,
        lambda e: e.append(
            {"filepath": [{"value": "audio/new.wav"}], "genre": [{"value": "jazz"}]}
        ),
    )
    s = run(ds, "cqt", stores)
    assert (s.computed, s.reused) == (1, 8)
    added = [p for p in segment_files(stores) if len(read_segment(p).keys) == 1]
    assert len(segment_files(stores)) == 2 and len(added) == 1
    _assert_same_store(s.store_path, fresh("added"))

    # another patch hop: the same store, found at once
    other_hop = make_feature("cqt", {"patch_hop": 7})
    assert make_plan(ds, other_hop, stores).store_path == s.store_path
    again = run(ds, other_hop, stores)
    assert again.existed and again.computed == 0

    # an audio file overwritten with other audio under the same name: that file only, reported
    before = read_tables(s.store_path)
    old_rows = _features(s.store_path)
    write_wav(tmp_path / "audio/f05.wav", tone(80, 1.5))
    s = run(ds, "cqt", stores)
    assert (s.computed, s.reused) == (1, 8)
    assert s.changed == [str((tmp_path / "audio/f05.wav").absolute())]
    after = read_tables(s.store_path)
    new_rows = _features(s.store_path)
    for i in range(after.n_files):
        a = new_rows[after.offset[i] : after.offset[i] + after.n_frames[i]]
        b = old_rows[before.offset[i] : before.offset[i] + before.n_frames[i]]
        assert (a.shape == b.shape and np.array_equal(a, b)) == (i != 5), i
    _assert_same_store(s.store_path, fresh("overwritten"))
    assert verify(stores) == []


def _die_at(monkeypatch, moment: str, k: int) -> None:
    """In a forked child: SIGKILL this process at ``moment``, the ``k``-th time it comes."""
    from common import catalogue, fileio
    from common.store import write
    from precompute import seal

    # os.replace as the one atomic replace calls it: first to seal the segment, then the view
    proxy = type("Os", (), {"__getattr__": lambda self, n: getattr(os, n)})()
    proxy.replace = os.replace
    monkeypatch.setattr(fileio, "os", proxy)
    target, name, before = {
        "file done": (layout.SegmentBuild, "finished", False),  # frames written, marker maybe not
        "marker flushed": (layout.SegmentBuild, "flush", False),
        "sealing: before the rename": (seal, "seal_segment", True),  # no status, no checksums
        "sealing: flushed, not renamed": (proxy, "replace", True),
        "sealed, not registered": (catalogue.Catalogue, "register_segment", True),
        "registering the segment": (
            catalogue.Catalogue,
            "_insert_segment",
            False,
        ),  # in the transaction
        "writing the view": (write, "replace_file", True),  # written, not flushed nor renamed
        "view renamed, not registered": (proxy, "replace", False),
        "registering the view": (catalogue.Catalogue, "_insert_view", False),
    }[moment]
    real, count = getattr(target, name), [0]

    def wrapper(*a, **kw):
        count[0] += 1
        if before and count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*a, **kw)
        if not before and count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    monkeypatch.setattr(target, name, wrapper)


def _build_then_die(ds, stores, moment, k):
    """A forked child that builds and is killed (SIGKILL) at ``moment``."""
    ctx = multiprocessing.get_context("fork")

    def child():
        mp = pytest.MonkeyPatch()
        _die_at(mp, moment, k)
        run(ds, "cqt", stores, jobs=1)

    p = ctx.Process(target=child)
    p.start()
    p.join()
    return p.exitcode


def _assert_no_half_segment(stores: Path) -> None:
    """Every segment under its final name, and every one the catalogue knows, is whole."""
    known = {s["path"] for s in Catalogue(stores).segments()}
    assert verify_folder(stores) == []
    assert known <= {Path(os.path.abspath(p)) for p in segment_files(stores)}


MOMENTS = [
    ("file done", 2), ("file done", 7), ("marker flushed", 4),
    ("sealing: before the rename", 1), ("sealing: flushed, not renamed", 1),
    ("sealed, not registered", 1), ("registering the segment", 1),
    ("writing the view", 1), ("view renamed, not registered", 2), ("registering the view", 1),
]  # fmt: skip


@pytest.mark.slow
def test_kill_9_at_10_moments_then_resume_gives_the_identical_store(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "MARKER_EVERY_S", 0.0)  # a marker per file: resume from each
    ds = _dataset(tmp_path, n=10)
    ref = run(ds, "cqt", tmp_path / "ref", jobs=1).store_path
    resumed = 0
    for trial, (moment, k) in enumerate(MOMENTS):
        stores = tmp_path / f"trial{trial}"
        plan = make_plan(ds, "cqt", stores)
        code = _build_then_die(ds, stores, moment, k)
        assert code == -signal.SIGKILL, (moment, code)
        _assert_no_half_segment(stores)
        s = run(ds, "cqt", stores, jobs=1)
        _assert_same_store(s.store_path, ref)
        assert s.computed + s.resumed + s.reused >= 10 or s.existed, moment
        resumed += s.resumed > 0
        assert verify(s.store_path) == [] and verify_folder(stores) == []
        assert not partial_segments(stores) and not done_markers(stores)
        with StoreLock(plan.lock_path):  # a lock file left by the kill is not held by anyone
            pass
        assert len(segment_files(stores)) == 1
    assert resumed >= 3, "no kill landed mid-computation"


def _limited(limit_bytes):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return set_limit


def _cli(ds, stores, feature="cqt"):
    return [
        sys.executable, "-m", "precompute", "run", "--dataset", str(ds), "--feature", feature,
        "--stores", str(stores), "-q",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_full_disk_gives_one_line_and_the_build_resumes(tmp_path):
    ds = _dataset(tmp_path)
    ref = run(ds, "cqt", tmp_path / "ref").store_path
    stores = tmp_path / "stores"
    res = subprocess.run(
        _cli(ds, stores), capture_output=True, text=True, preexec_fn=_limited(200_000), timeout=120
    )
    assert res.returncode == 4, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: no space left in "), res.stderr
    assert "Traceback" not in res.stderr and "re-run" in errors[0]
    res = subprocess.run(_cli(ds, stores), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    _assert_same_store(res.stdout.strip().splitlines()[-1], ref)


def test_a_store_that_cannot_fit_is_refused_before_computing(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    ds = _dataset(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    cmd = " ".join(_cli(ds, small))
    res = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=300k tmpfs {small} && {cmd}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "mount" in res.stderr and res.returncode != 4:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert res.returncode == 4, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: not enough space in {small}/set: the store needs ")
    assert " are free" in line


@pytest.mark.slow
def test_two_concurrent_runs_one_builds_the_other_refuses_or_waits(tmp_path):
    ds = _dataset(tmp_path, n=12, seconds=2.0)
    stores = tmp_path / "stores"
    plan = make_plan(ds, "cqt", stores)
    # the first build waits as soon as it holds the store's lock, until the test lets it go
    first = subprocess.Popen(
        _cli(ds, stores), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=pause_env("locked", 1, tmp_path),
    )  # fmt: skip
    wait_for(lambda: (tmp_path / "locked.paused").exists(), first, "the lock was taken")
    second = subprocess.run(_cli(ds, stores), capture_output=True, text=True, timeout=120)
    assert second.returncode == 3
    assert f"being built by another precompute (pid {first.pid} on " in second.stderr
    waiter = subprocess.Popen(
        [*_cli(ds, stores), "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = "-"
    while line and "waiting for" not in line:
        line = waiter.stderr.readline()
    assert f"waiting for pid {first.pid}" in line, line
    (tmp_path / "locked.go").touch()
    out, err = first.communicate()
    assert first.returncode == 0, err
    w_out, w_err = waiter.communicate()
    assert waiter.returncode == 0 and "store exists" in w_out, w_err
    assert w_out.strip().splitlines()[-1] == str(plan.store_path)


def test_a_store_deleted_by_hand_is_forgotten_and_its_rows_stay_in_the_pool(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    first = run(ds, "cqt", stores)
    first.store_path.unlink()
    _edit(ds, lambda e: e[0].update(genre=[{"value": "jazz"}]))
    s = run(ds, "cqt", stores)  # the features were never in the view: nothing is computed
    assert (s.computed, s.reused) == (0, 8)
    recorded = [r.path for r in Catalogue(stores).views()]
    assert recorded == [s.store_path.absolute()]
    res = CliRunner().invoke(main, ["ls", str(stores)])
    assert res.exit_code == 0 and s.store_path.name in res.output


def test_ls_and_gc(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    old = run(ds, "cqt", stores).store_path
    _edit(ds, lambda e: e[1].update(genre=[{"value": "folk"}]))
    new = run(ds, "cqt", stores).store_path
    long_ago = time.time() - 10 * 86400
    os.utime(old, (long_ago, long_ago))  # when a store was last used is its file's mtime
    res = CliRunner().invoke(main, ["ls", str(stores)])
    assert res.exit_code == 0
    header, *rows, pool = res.output.splitlines()
    assert pool.startswith("pool: 1 segment(s), ") and pool.endswith(
        "100% of their frames used by a store"
    )
    assert header.split() == [
        "store",
        "dataset",
        "feature",
        "files",
        "hours",
        "view",
        "features",
        "created",
        "last",
        "used",
    ]
    assert len(rows) == 2 and all(" cqt " in r and " 8 " in r for r in rows)
    res = CliRunner().invoke(main, ["gc", str(stores), "--older-than", "5", "--dry-run"])
    assert res.exit_code == 0 and f"would remove {old}" in res.output and old.exists()
    res = CliRunner().invoke(main, ["gc", str(stores), "--older-than", "5"])
    assert res.exit_code == 0 and not old.exists() and new.exists()
    assert [r.path for r in Catalogue(stores).views()] == [new.absolute()]
    assert len(segment_files(stores)) == 1  # the store kept needs the one segment
    assert run(ds, "cqt", stores).existed  # the store in use is still found


def test_a_format_1_store_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    p = tmp_path / "demo" / "lms-0123456789abcdef.h5"
    p.parent.mkdir()
    with h5py.File(p, "w") as h:
        h.attrs.update(format_version=1, dataset="demo", feature=json.dumps({"kind": "lms"}))
        h.create_dataset("features", data=np.zeros((4, 1, 8), np.float32))
    with pytest.raises(
        StoreError,
        match=r"store format 1, this mirpatch reads format 4; delete it and rebuild with: precompute run --dataset demo.pyjama --feature lms",
    ):
        read_tables(p)
    with pytest.raises(DatasetError, match="delete it and rebuild with"):
        StoreDataset(p)


def test_training_finds_its_store_in_the_catalogue_and_knows_when_it_is_stale(tmp_path):
    ds = _dataset(tmp_path)
    stores = tmp_path / "stores"
    s = run(ds, "cqt", stores)
    dm = StoreDataModule(dataset=ds, feature="cqt", stores=stores)
    assert dm.prepare_data() == s.store_path.absolute()
    # another patch length is the same store
    dm = StoreDataModule(
        dataset=ds, feature=make_feature("cqt", {"patch_frames": 32}), stores=stores
    )
    assert dm.prepare_data() == s.store_path.absolute()
    _edit(ds, lambda e: e[0].update(genre=[{"value": "jazz"}]))
    with pytest.raises(
        DatasetError,
        match=r"set.pyjama has changed since its cqt store was built .*update it with:\n  precompute run --dataset",
    ):
        StoreDataModule(dataset=ds, feature="cqt", stores=stores).prepare_data()
