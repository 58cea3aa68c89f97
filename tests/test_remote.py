"""Stores on object storage: pushed to and trained from a real S3-compatible server
(``moto_server`` on localhost, behind a proxy that counts bytes and fails requests on purpose).

Training from the URL gives the weights of the local store; the cache keeps a stable part of a
store larger than itself, never holds a row that fails its checksum (also after kill -9);
a changed byte in a remote segment is found and named; errors are one line naming the URL;
transient errors are retried."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.remote import Remote, RemoteError
from common.store import StoreError, read_features
from train import loop
from train.checkpoints import load_checkpoint
from train.data import StoreDataModule, StoreDataset
from train.data.remote import RemoteFrames

from .s3server import S3Server, free_port, restore
from .test_trainer import CQT, TINY_PITCH, experiment

ROOT = Path(__file__).parent.parent
BUCKET = "mirpatch-tests"


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def env(s3, tmp_path, monkeypatch):
    """This process talks to the test server; its cache is the test's."""
    for k, v in {**s3.env, "MIRPATCH_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {**os.environ}


@pytest.fixture(scope="module")
def pushed(s3, tiny_stores, tmp_path_factory) -> str:
    """The tiny stores, pushed once: the URL of their stores folder."""
    from precompute.remote import push

    before = s3.apply()
    try:
        url = f"s3://{BUCKET}/tiny"
        push(tiny_stores, url, log=lambda m: None)
    finally:
        restore(before)
    return url


def _cached_rows_are_sound(cache: Path) -> int:
    """How many rows the cache marks present, each checked against its checksum in its
    replica (a row being filled, or killed half-way, has no mark)."""
    n = 0
    for mark in (cache / "present").glob("*/*"):
        checksum, at, nbytes = mark.name.split("-")
        with open(cache / "segments" / f"{mark.parent.name}.seg", "rb") as f:
            f.seek(int(at))
            data = f.read(int(nbytes))
        assert hashlib.blake2b(data, digest_size=16).hexdigest() == checksum, mark
        n += 1
    return n


def _cli(tool: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", tool, *args], env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)  # fmt: skip


def _view_url(url: str, kind: str) -> str:
    (rel,) = [r for r in Remote(url).views() if Path(r).name.startswith(f"{kind}-")]
    return f"{url}/{rel}"


def test_push_then_ls_info_verify_and_pull_give_back_the_same_store(
    env, pushed, tiny_stores, tmp_path
):
    ls = _cli("precompute", "ls", pushed, env=env)
    assert ls.returncode == 0 and "lms" in ls.stdout and "cqt" in ls.stdout, ls.stderr
    view = _view_url(pushed, "cqt")
    info = _cli("precompute", "info", view, env=env)
    assert info.returncode == 0 and view in info.stdout, info.stderr
    ok = _cli("precompute", "verify", pushed, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 2 store(s)"), ok.stderr
    pulled = _cli("precompute", "pull", view, str(tmp_path / "pulled"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    local = Path(pulled.stdout.strip())
    original = tiny_stores / local.relative_to(tmp_path / "pulled")
    assert np.array_equal(read_features(local), read_features(original))
    again = _cli("precompute", "push", str(tiny_stores), pushed, env=env)  # nothing new to send
    assert again.returncode == 0 and "push pool/" not in again.stderr


def test_a_remote_dataset_reads_the_bytes_of_the_local_one(env, pushed, tiny_stores):
    url = _view_url(pushed, "cqt")
    remote = StoreDataset(url, "train", target="pitchmidi")
    local = StoreDataset(tiny_stores / Path(url).relative_to(Path(pushed)).as_posix(), "train",
                         target="pitchmidi")  # fmt: skip
    assert isinstance(remote.features, RemoteFrames) and len(remote) == len(local)
    idx = list(range(0, len(local), 3))
    a, b = remote.__getitems__(idx), local.__getitems__(idx)
    for x, y in zip(a, b):
        assert torch.equal(x["X"], y["X"]) and torch.equal(x["y"], y["y"])
    assert torch.equal(remote[5]["X"], local[5]["X"])
    assert _cached_rows_are_sound(Path(env["MIRPATCH_CACHE_DIR"])) > 0


@pytest.mark.slow
def test_training_from_s3_gives_the_weights_of_the_local_store(
    env, pushed, tiny_stores, demo_small, tmp_path
):
    """Multi-pitch from cqt (frame targets) with 0 workers; the kill test below trains from S3
    with 2."""
    over = {"feature": CQT, "target": {"name": "pitchmidi"}, "model": TINY_PITCH,
            "patch": {"frames": 32, "hop": 16}, "train": {"epochs": 2, "samples_per_epoch": 96}}  # fmt: skip
    runs = {}
    for where, stores in (("local", tiny_stores), ("s3", pushed)):
        (tmp_path / where).mkdir()
        cfg = experiment(tmp_path / where, demo_small, tiny_stores, **over)
        cfg = cfg.replace(dataset={"stores": str(stores)})
        runs[where] = loop.fit(cfg, tmp_path / where / "runs", progress=False, log=lambda m: None)
    a, b = (load_checkpoint(r.folder / "last.pt") for r in runs.values())
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_cache_of_half_the_store_keeps_half_and_downloads_the_rest_once_an_epoch(env, pushed):
    """Epochs of training and validation batches: the first downloads what it reads, the next
    ones at most 0.6 of the store (an LRU cache would download all of it again)."""
    url = _view_url(pushed, "cqt")
    probe = StoreDataset(url)
    f = probe.features
    row_mb = float(f.row_frames.max() * f.frame_bytes / 2**20)
    dm = StoreDataModule(url, target="pitchmidi", batch_size=8, cache_gb=f.store_bytes / 2**31,
                         split_fractions=(0.5, 0.25, 0.25),
                         shuffle_block_mb=row_mb, shuffle_blocks_per_draw=1)  # fmt: skip
    dm.setup()
    ds = dm.train_ds
    cache = ds.features.cache
    assert not ds.features.fits and 0 < ds.features.resident.sum() < len(ds.features.resident)
    read_rows = np.unique(np.concatenate([ds.features.rows_of(d.file_frame[d.files])
                                          for d in (ds, dm.valid_ds)]))  # fmt: skip
    read_bytes = int(ds.features.row_frames[read_rows].sum()) * ds.features.frame_bytes
    per_epoch, seen = [], []
    for epoch in range(3):
        dm.set_epoch(epoch)
        before, n = cache.downloaded(), 0
        for batch in dm.train_dataloader():
            n += batch["X"].shape[0]
            assert cache.held() <= cache.limit + 2 * row_mb * 2**20  # the rows being read
        for _ in dm.val_dataloader():
            pass
        per_epoch.append(cache.downloaded() - before)
        seen.append(n)
    assert per_epoch[0] == read_bytes  # everything it reads, once
    for d in per_epoch[1:]:
        assert d <= 0.6 * f.store_bytes, (per_epoch, f.store_bytes)
    assert seen[0] == seen[1] == len(ds) // 8 * 8


def test_a_changed_byte_in_a_remote_segment_is_found_and_named(env, s3, tiny_stores, tmp_path):
    from precompute.remote import push

    url = f"s3://{BUCKET}/flipped"
    push(tiny_stores, url, log=lambda m: None)
    view = _view_url(url, "lms")
    ds = StoreDataset(tiny_stores / Path(view).relative_to(Path(url)).as_posix())
    seg, at, nbytes = ds.tables.byte_range(3)
    remote = Remote(url)
    rel = f"pool/{seg.parent.name}/{seg.name}"
    data = bytearray(Path(seg).read_bytes())
    data[at + nbytes // 2] ^= 0x40
    (tmp_path / "bad.h5").write_bytes(bytes(data))
    remote.put(tmp_path / "bad.h5", rel)
    r = _cli("precompute", "verify", url, env=env)
    assert r.returncode == 1
    assert f"{ds.tables.names[3]}: its frames differ from their checksum" in r.stderr
    assert f"{url}/{rel}, bytes {at}-{at + nbytes}" in r.stderr
    fresh = StoreDataset(view, cache_dir=str(tmp_path / "empty-cache"))
    with pytest.raises(Exception, match=f"{ds.tables.names[3]}.*fail their checksum"):
        fresh.features.read(int(fresh.file_frame[3]), 4)
    assert _cached_rows_are_sound(tmp_path / "empty-cache") == 0  # nothing marked present


def test_transient_errors_are_retried_and_do_not_lose_the_read(env, s3, pushed, tmp_path):
    url = _view_url(pushed, "lms")
    ds = StoreDataset(url, cache_dir=str(tmp_path / "c"))
    before = s3.proxy.requests
    s3.proxy.fail(["503", "reset", "503"])
    x = ds.features.read(0, int(ds.tables.n_frames[0]))
    assert s3.proxy.requests >= before + 4 and not s3.proxy.faults
    assert hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest() == ds.tables.checksum[0]


def _one_line_error(r: subprocess.CompletedProcess, url: str, reason: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert url in lines[0] and reason in lines[0], lines[0]


def test_errors_are_one_line_naming_the_url(env, s3, pushed, tmp_path, monkeypatch):
    """Through the command line (one line on stderr, a non-zero exit): a missing bucket, no
    credentials; in this process, the error a refused connection and a timeout raise."""
    quick = {**env, "MIRPATCH_REMOTE_RETRIES": "1", "MIRPATCH_REMOTE_TIMEOUT": "1",
             "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    missing = f"s3://no-such-bucket-{os.getpid()}/stores"
    _one_line_error(_cli("precompute", "ls", missing, env=quick), missing, "no such bucket")
    bare = {k: v for k, v in quick.items() if not k.startswith("AWS_ACCESS") and
            not k.startswith("AWS_SECRET")}  # fmt: skip
    bare |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
             "AWS_CONFIG_FILE": str(tmp_path / "none")}  # fmt: skip
    _one_line_error(_cli("precompute", "ls", pushed, env=bare), pushed, "no credentials")
    for k in ("MIRPATCH_REMOTE_RETRIES", "MIRPATCH_REMOTE_TIMEOUT", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(k, quick[k])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RemoteError, match=f"^{pushed}: connection refused by http://127"):
        Remote(pushed).views()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.env["AWS_ENDPOINT_URL"])
    s3.proxy.fail(["hang"] * 4)
    try:
        with pytest.raises(RemoteError, match=f"^{pushed}: timed out"):
            Remote(pushed).views()
    finally:
        s3.proxy.faults.clear()


@pytest.mark.slow
def test_kill_9_while_reading_from_s3_then_resume_gives_the_weights_and_a_sound_cache(
    env, pushed, tiny_stores, demo_small, tmp_path
):
    from common.pause import pause_env

    from .test_resume import _config, _env, _kill_at, _train

    cfg = _config(tmp_path / "cfg", demo_small, tiny_stores, num_workers=2)
    text = cfg.read_text().replace(str(tiny_stores), pushed)
    cfg.write_text(text)
    assert pushed in text
    straight = _config(tmp_path / "local", demo_small, tiny_stores, num_workers=2)
    a_run = subprocess.run([sys.executable, "-m", "train", "run", "--config", str(straight), "--out",
                            str(tmp_path / "a"), "-q"], env=_env(), capture_output=True, text=True)  # fmt: skip
    assert a_run.returncode == 0, a_run.stderr[-2000:]
    pause = tmp_path / "pause"
    pause.mkdir()
    run_env = {**_env(), **{k: env[k] for k in env if k.startswith(("AWS_", "MIRPATCH_CACHE"))}}
    p = _train(["--config", str(cfg), "--out", str(tmp_path / "b")],
               {**run_env, "MIRPATCH_PAUSE": pause_env("step", 2, pause)["MIRPATCH_PAUSE"]})  # fmt: skip
    _kill_at(p, pause)
    (killed,) = (tmp_path / "b").iterdir()
    assert _cached_rows_are_sound(Path(env["MIRPATCH_CACHE_DIR"])) > 0
    r = subprocess.run([sys.executable, "-m", "train", "run", "--resume", str(killed), "-q"],
                       env=run_env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (straight_run,) = (tmp_path / "a").iterdir()
    a, b = (load_checkpoint(x / "last.pt") for x in (straight_run, killed))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_precompute_run_into_a_url_builds_pushes_and_finds_it_again(env, demo_small, tmp_path):
    url = f"s3://{BUCKET}/built"
    args = ["run", "--dataset", str(demo_small), "--feature", "lms", "--stores", url, "-q"]
    first = _cli("precompute", *args, env=env)
    assert first.returncode == 0, first.stderr
    view = first.stdout.strip().splitlines()[-1]
    assert view.startswith(f"{url}/") and view.endswith(".h5")
    again = _cli("precompute", *args, env=env)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == view
    assert "exists:" in again.stderr
    ok = _cli("precompute", "verify", view, env=env)
    assert ok.returncode == 0, ok.stderr


def test_gc_on_a_url_removes_only_segments_no_view_needs(env, tiny_stores, tmp_path):
    from precompute.remote import gc_remote, push

    url = f"s3://{BUCKET}/gc"
    push(tiny_stores, url, log=lambda m: None)
    remote = Remote(url)
    (tmp_path / "stray.h5").write_bytes(b"\0" * 4096)
    remote.put(tmp_path / "stray.h5", "pool/0123/seg-stray.h5")
    said = []
    assert gc_remote(url, 1000, 1.0, False, log=said.append) == 0  # a push may be under way
    assert gc_remote(url, 1000, 0.0, True, log=said.append) == 4096 and "would remove" in said[-1]
    assert remote.info("pool/0123/seg-stray.h5") is not None
    gone = _cli("precompute", "gc", url, "--older-than", "1000", "--grace", "0", env=env)
    assert gone.returncode == 0 and gone.stdout.count("remove ") == 1, gone.stdout
    assert "seg-stray" in gone.stdout and remote.info("pool/0123/seg-stray.h5") is None
    ok = _cli("precompute", "verify", url, env=env)
    assert ok.returncode == 0, ok.stderr


def test_a_read_that_still_fails_after_its_retries_ends_training_with_one_line(
    env, s3, pushed, demo_small, tiny_stores, tmp_path
):
    cfg = experiment(tmp_path, demo_small, tiny_stores, train={"epochs": 1, "num_workers": 2})
    path = tmp_path / "remote.yaml"
    keep = {
        k: v for k, v in cfg.to_dict().items() if k not in ("source", "feature_file", "model_file")
    }
    keep["dataset"]["stores"] = pushed
    path.write_text(__import__("yaml").safe_dump(keep))
    s3.proxy.fail(["503 range"] * 40)
    r = _cli("train", "run", "--config", str(path), "--out", str(tmp_path / "runs"), "-q",
             env={**env, "MIRPATCH_REMOTE_RETRIES": "1"})  # fmt: skip
    s3.proxy.faults.clear()
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {pushed}/pool/") and "503 SlowDown" in last, r.stderr[-2000:]


def test_push_refuses_a_remote_segment_of_the_same_name_with_other_frames(
    env, tiny_stores, tmp_path
):
    """A segment built elsewhere under the same name (same files and feature, other bytes) is
    never overwritten nor trusted: the push stops, naming it."""
    import shutil

    import h5py

    from precompute.remote import push

    url = f"s3://{BUCKET}/other"
    push(tiny_stores, url, log=lambda m: None)
    remote = Remote(url)
    (rel,) = [r for r in remote.glob("pool/*/seg-*.h5")][:1]
    local = tiny_stores / rel
    other = tmp_path / "other.h5"
    shutil.copy(local, other)
    with h5py.File(other, "r+") as h:  # its table says other frames for its first file
        h["rows/checksum"][0] = b"0" * 32
    assert other.stat().st_size == local.stat().st_size
    remote.put(other, rel)
    with pytest.raises(
        StoreError, match=f"{url}/{rel}: a segment of this name is there with other frames"
    ):
        push(tiny_stores, url, log=lambda m: None)
