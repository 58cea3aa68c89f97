"""The cache of remote stores' frames under races, with a remote of bytes in memory: a read that
an eviction overlaps reads again, an eviction holds each row's lock until its bytes are freed,
and a fill that fails frees what it wrote and marks nothing. Every interleaving is forced (a
hook at the racing point, or a process waiting at a pause point), never timed."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.pause import pause_env
from common.store import StoreError
from train.data.read import Frames
from train.data.remote import RemoteFrames, Row, RowCache, _row_lock

from .conftest import wait_for

ROOT = Path(__file__).parent.parent
FB = 4096  # bytes of a frame: 1024 float32
SEG = np.arange(4 * 1024, dtype=np.float32).reshape(4, 1024) + 1  # no zero anywhere
RAW = SEG.tobytes()


class MemoryRemote:
    """A remote segment of 4 frames: rows A (frames 0-1) and B (2-3)."""

    url = "s3://memory/stores"

    def __init__(self, raw: bytes = RAW):
        self.raw = raw

    def url_of(self, rel=""):
        return f"{self.url}/{rel}"

    def ranges(self, rels, starts, ends):
        return [self.raw[s:e] for s, e in zip(starts, ends)]


def _frames(cache: RowCache, remote=None) -> RemoteFrames:
    """A RemoteFrames over the two rows, as a view of that segment would make it."""
    remote = remote or MemoryRemote()
    seg = "pool/k/seg-x.h5"
    key = cache.replica_key(remote.url_of(seg))
    rf = object.__new__(RemoteFrames)
    rf.remote, rf.cache, rf.segments = remote, cache, [seg]
    Frames.__init__(rf, [(cache.replica(key, len(RAW)), 0, 4)], (1024,), np.float32,
                    lambda n: ((n, 1024), (1024, 1)))  # fmt: skip
    rf.row_addr, rf.row_frames = np.array([0, 2]), np.array([2, 2])
    sums = [hashlib.blake2b(RAW[a : a + 2 * FB], digest_size=16).hexdigest() for a in (0, 2 * FB)]
    rf.rows = [
        Row(sums[0], seg, key, 0, 2 * FB, "a.wav"),
        Row(sums[1], seg, key, 2 * FB, 2 * FB, "b.wav"),
    ]
    rf.store_bytes, rf.fits, rf.keep = len(RAW), True, 1 << 62
    rf.resident, rf.ahead_rows = np.array([True, True]), np.zeros(0, np.int64)
    return rf


def _read_a(rf: RemoteFrames) -> np.ndarray:
    out = np.empty((1, 2, 1024), np.float32)
    rf.gather([0], 2, out)
    return out[0]


@pytest.mark.parametrize("refilled", [False, True])
def test_a_read_that_an_eviction_overlaps_reads_again(tmp_path, monkeypatch, refilled):
    """Between the reader's check of row A and its read, another process evicts A (its bytes
    freed: zeros) and, with ``refilled``, fills it again before the reader looks."""
    rf = _frames(RowCache(tmp_path, 2 * FB))
    assert np.array_equal(_read_a(rf), SEG[0:2])  # A cached, and known to this reader
    real, raced = Frames.gather, []

    def racing(self, addrs, length, out):
        if not raced:
            raced.append(1)
            other = _frames(RowCache(tmp_path, 2 * FB))  # another process's cache
            other.cache.fill(other.remote, [other.rows[1]], other.keep)  # B in, A out
            assert not other.cache.present(other.rows[0])
            real(self, addrs, length, out)  # reads A's freed bytes
            assert not out.any()
            if refilled:
                other.cache.fill(other.remote, [other.rows[0]], other.keep)
            return
        real(self, addrs, length, out)

    monkeypatch.setattr(Frames, "gather", racing)
    assert np.array_equal(_read_a(rf), SEG[0:2])
    assert np.array_equal(_read_a(rf), SEG[0:2])  # and the next read too


def test_an_eviction_keeps_each_rows_lock_until_its_bytes_are_freed(tmp_path):
    """A fill of a row waits while another process evicts it: the row's lock is held from its
    mark's removal to the hole punched, so a fill can never mark bytes about to be freed."""
    cache = RowCache(tmp_path / "cache", 2 * FB)
    rf = _frames(cache)
    _read_a(rf)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from tests.test_remote_cache import "
        "_frames; from train.data.remote import RowCache; rf = _frames(RowCache(sys.argv[2], "
        "2 * 4096)); rf.cache.fill(rf.remote, [rf.rows[1]], rf.keep)"
    )
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, **pause_env("evicting", 1, pause)}
    p = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(tmp_path / "cache")],
                         env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: (pause / "evicting.paused").exists(), p, "the eviction")
    assert not cache.present(rf.rows[0])  # unmarked, its bytes not freed yet
    fd = os.open(tmp_path / "cache" / "lock", os.O_RDWR)
    with pytest.raises(OSError):  # its lock is held: a fill of A waits
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _row_lock(rf.rows[0]))
    (pause / "evicting.go").touch()
    assert p.wait() == 0, p.stderr.read()
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _row_lock(rf.rows[0]))  # released
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, _row_lock(rf.rows[0]))
    os.close(fd)
    assert np.array_equal(_read_a(rf), SEG[0:2])  # fetched again, whole


def test_a_fill_with_a_row_that_fails_its_checksum_marks_nothing_and_frees_what_it_wrote(tmp_path):
    bad = bytearray(RAW)
    bad[3 * FB] ^= 0xFF  # a byte of row B
    cache = RowCache(tmp_path, 4 * FB)
    rf = _frames(cache, MemoryRemote(bytes(bad)))
    with pytest.raises(StoreError, match=r"b\.wav \(bytes 8192-16384\) fail their checksum"):
        cache.fill(rf.remote, rf.rows, rf.keep)
    assert cache.held() == 0 and not any(cache.present(r) for r in rf.rows)
    replica = next((tmp_path / "segments").iterdir())
    assert os.stat(replica).st_blocks == 0  # A was written, then freed: nothing allocated
