"""StoreDataset and StoreDataModule: exact items, aligned targets, stable disjoint splits, workers."""

from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from common.patches import patch_index
from common.pyjama import read_pyjama, write_pyjama
from common.store import StoreError, memmap_dataset, read_tables
from precompute.pipeline import run
from train.data import (
    DatasetError,
    EpochSampler,
    StoreDataModule,
    StoreDataset,
    WorkBatchSampler,
    assign_splits,
    collate,
    collate_padded,
)

from .dense_targets import dense_target, read_target


@pytest.fixture(scope="session")
def stores(tiny_stores):
    """The lms and cqt stores of ``demo_small`` that the trainer's tests use too (built once)."""
    return {f: next(tiny_stores.rglob(f"{f}-*.h5")) for f in ("lms", "cqt")}


def direct(store, name="features"):
    """The view's features as plain h5py reads them, or a target as mirpatch wrote it before
    runs (dense rows from the reference code, for frame-level targets)."""
    if name != "features":
        target = name.removeprefix("targets/")
        spec = read_tables(store).targets[target]
        return dense_target(store, target) if spec.frame_level else read_target(store, target)
    with h5py.File(store) as h:
        return h[name][()]


def _direct_patches(store, ds, idx, name="features"):
    rows = direct(store, name)
    out = []
    for i in idx:
        o = ds.tables.offset[ds.patch_file[i]] + ds.patch_start[i]
        block = rows[o : o + ds.patch_frames]
        out.append(ds.feature.patch_input(block) if name == "features" else block.T)
    return np.stack(out)


def test_patch_items_are_views_equal_to_a_direct_slice_of_the_store(stores):
    ds = StoreDataset(stores["lms"], unit="patch", target="genre")
    genre = direct(stores["lms"], "targets/genre")
    for idx in (0, 7, len(ds) - 1):
        item = ds[idx]
        np.testing.assert_array_equal(
            item["X"].numpy(), _direct_patches(stores["lms"], ds, [idx])[0]
        )
        assert item["X"].shape == (1, 128, 64) and item["X"].dtype == torch.float32
        # over the whole map, in the model's layout: nothing was copied
        assert item["X"].untyped_storage().nbytes() == direct(stores["lms"]).nbytes
        # a class index as cross_entropy takes it (stored as int32)
        assert item["y"].dtype == torch.int64 and int(item["y"]) == genre[ds.patch_file[idx]]


@pytest.mark.parametrize("feature", ["lms", "cqt"])
def test_default_collate_and_the_fast_path_give_the_same_batch(stores, feature):
    ds = StoreDataset(stores[feature], unit="patch", target="pitchmidi")
    idx = list(range(0, len(ds), max(1, len(ds) // 40)))
    expected = _direct_patches(stores[feature], ds, idx)
    expected_y = _direct_patches(stores[feature], ds, idx, "targets/pitchmidi")
    a = torch.utils.data.default_collate(ds.__getitems__(idx))
    b = collate(ds.__getitems__(idx))
    for batch in (a, b):
        np.testing.assert_array_equal(batch["X"].numpy(), expected)
        np.testing.assert_array_equal(batch["y"].numpy(), expected_y)
        # one time-major block seen as (B, C, F, L): permuted strides, not a transposed copy
        B, C, F, L = batch["X"].shape
        assert batch["X"].stride() == (L * C * F, F, 1, C * F)
    # single items stacked by hand, in another order, still give the right batch
    items = [ds[i] for i in idx[::-1]]
    np.testing.assert_array_equal(torch.stack([it["X"] for it in items]).numpy(), expected[::-1])


def test_items_are_private_views_and_a_kept_batch_is_never_overwritten(stores):
    ds = StoreDataset(stores["cqt"], unit="patch", target="pitchmidi")
    before = direct(stores["cqt"])
    item = ds.__getitems__([0, 1, 2, 3])[2]["X"]
    item.mul_(2)  # the process's copy-on-write map, as any in-memory dataset's tensors
    assert np.array_equal(direct(stores["cqt"]), before)  # the file is untouched
    ds = StoreDataset(stores["cqt"], unit="patch", target="pitchmidi")
    assert torch.equal(pickle.loads(pickle.dumps(ds[3]["X"])), ds[3]["X"])  # pickles a copy
    # batches kept by the consumer, more than the ring holds, some only through derived tensors
    order = np.random.default_rng(1).permutation(len(ds))[:96]
    batches = [order[k : k + 8].tolist() for k in range(0, 96, 8)]
    kept = []
    for i, idx in enumerate(batches):
        b = collate(ds.__getitems__(idx))
        kept.append(b["X"] if i % 2 else b["X"][:, :, :10])
        if i % 3 == 0:
            torch.utils.data.default_collate(ds.__getitems__(idx[::-1]))  # made and dropped
    for idx, x in zip(batches, kept):
        np.testing.assert_array_equal(
            x.numpy(), _direct_patches(stores["cqt"], ds, idx)[:, :, : x.shape[2]]
        )


def test_frame_pitch_target_is_cut_to_the_patch(stores):
    ds = StoreDataset(stores["cqt"], unit="patch", target="pitchmidi")
    pitch = direct(stores["cqt"], "targets/pitchmidi")
    item = ds[5]
    off = ds.tables.offset[ds.patch_file[5]] + ds.patch_start[5]
    assert item["y"].shape == (360, 64) and item["y"].dtype == torch.uint8  # as stored
    np.testing.assert_array_equal(item["y"].numpy(), pitch[off : off + 64].T)
    # and the annotated notes are where the CQT's energy is: in frames with one note, the loudest
    # bin within a semitone of each active target bin is that bin's neighbourhood
    X = item["X"][0].numpy()
    for frame in range(0, 64, 8):
        for b in np.nonzero(item["y"][:, frame].numpy())[0]:
            lo, hi = max(0, b - 12), min(360, b + 13)
            assert abs(lo + int(X[lo:hi, frame].argmax()) - b) <= 2


def test_multilabel_target_and_file_and_whole_file_units(stores):
    tags = StoreDataset(stores["lms"], target="tag")
    assert tags[0]["y"].shape == (len(tags.spec.vocabulary),) and tags[0]["y"].dtype == torch.uint8
    ds = StoreDataset(stores["lms"], unit="file", target="pitchmidi")
    feats = direct(stores["lms"])
    item = ds[2]
    f = item["file"]
    starts = patch_index(ds.tables.n_frames[[f]], 64, 32)[1]
    assert item["X"].shape == (len(starts), 1, 128, 64)
    for k, s in enumerate(starts):
        off = ds.tables.offset[f] + s
        np.testing.assert_array_equal(
            item["X"][k].numpy(), feats[off : off + 64].transpose(1, 2, 0)
        )
    assert item["y"].shape == (len(starts), 128, 64)
    whole = StoreDataset(stores["lms"], unit="file", whole_file=True)[2]
    off, n = ds.tables.offset[f], ds.tables.n_frames[f]
    np.testing.assert_array_equal(whole["X"].numpy(), feats[off : off + n].transpose(1, 2, 0))
    batch = collate_padded([ds[0], ds[1]])
    assert batch["X"].shape[:2] == batch["mask"].shape


def test_work_unit_gives_versions_of_one_work(stores):
    ds = StoreDataset(stores["cqt"], unit="work", versions_per_work=2, seed=1)
    works = direct(stores["cqt"], "targets/work-id")
    assert len(ds) == len(np.unique(works))
    item = ds[0]
    assert item["X"].shape == (2, 1, 360, 64)
    assert (
        len({int(works[f]) for f in item["files"]}) == 1
        and int(works[item["files"][0]]) == item["work"]
    )
    assert item["files"][0] != item["files"][1]
    feats = direct(stores["cqt"])
    for k, (f, s) in enumerate(zip(item["files"].tolist(), item["starts"].tolist())):
        off = ds.tables.offset[f] + s
        np.testing.assert_array_equal(
            item["X"][k].numpy(), feats[off : off + 64].transpose(1, 2, 0)
        )
    assert torch.equal(ds[(0, 3)]["X"], ds[(0, 3)]["X"])  # (index, epoch) is reproducible


def test_other_patch_length_rederives_the_index(stores):
    ds = StoreDataset(stores["lms"], patch_frames=32, patch_hop=10)
    n = ds.tables.n_frames
    expected = [(f, s) for f in range(len(n)) for s in range(0, int(n[f]) - 32 + 1, 10)]
    assert list(zip(ds.patch_file.tolist(), ds.patch_start.tolist())) == expected
    assert ds[0]["X"].shape == (1, 128, 32)
    pf, ps = patch_index(np.array([10, 64, 65, 200]), 64, 32)
    assert pf.tolist() == [1, 2, 3, 3, 3, 3, 3] and ps.tolist() == [0, 0, 0, 32, 64, 96, 128]


def test_splits_disjoint_by_work_and_stable_when_files_are_added(stores, demo_small, tmp_path):
    parts = {s: StoreDataset(stores["lms"], split=s) for s in ("train", "valid", "test")}
    files = [set(p.files.tolist()) for p in parts.values()]
    assert sum(len(f) for f in files) == parts["train"].tables.n_files
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    works = direct(stores["lms"], "targets/work-id")
    work_sets = [set(works[list(f)].tolist()) for f in files]
    assert not (
        work_sets[0] & work_sets[1] or work_sets[0] & work_sets[2] or work_sets[1] & work_sets[2]
    )
    # no patch of a test file is in train
    assert not set(parts["train"].patch_file.tolist()) & files[2]
    # a dataset grown by more files keeps every old file where it was
    keys = [f"file:{i}" for i in range(200)]
    small, big = (
        assign_splits(keys[:100], (0.8, 0.1, 0.1), 0),
        assign_splits(keys, (0.8, 0.1, 0.1), 0),
    )
    assert np.array_equal(small, big[:100])
    assert 0.7 < (big == 0).mean() < 0.9
    coll = read_pyjama(demo_small)
    coll.entries = coll.entries[:12]
    sub = write_pyjama(coll, tmp_path / "sub.pyjama")
    sub_store = run(sub, "lms", tmp_path, audio_root=demo_small.parent).store_path
    for s in ("train", "valid", "test"):
        a = StoreDataset(sub_store, split=s)
        b = parts[s]
        assert set(a.tables.names[a.files]) <= set(b.tables.names[b.files])


def test_split_from_a_pyjama_description(demo_small, tmp_path):
    coll = read_pyjama(demo_small)
    from common.pyjama import Atom, Definition, Description

    for i, e in enumerate(coll.entries):
        e.descriptions["fold"] = Description(
            "fold", "global", "text", [Atom(value=["train", "validation", "test"][i % 3])]
        )
    coll.definitions["fold"] = Definition("text", "global", "free")
    p = write_pyjama(coll, tmp_path / "folds.pyjama")
    store = run(p, "lms", tmp_path / "s", audio_root=demo_small.parent).store_path
    ds = StoreDataset(store, split="valid", split_key="fold")
    assert ds.files.tolist() == list(range(1, 24, 3))
    with pytest.raises(DatasetError, match="split key 'genre': values .* are not train/valid/test"):
        StoreDataset(store, split="valid", split_key="genre")


def _batches(loader, n=3):
    out = []
    for i, b in enumerate(loader):
        if i == n:
            break
        out.append(b)
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_give_the_same_batches_as_no_workers(stores, context):
    def loader(workers):
        dm = StoreDataModule(
            stores["cqt"],
            target="pitchmidi",
            batch_size=8,
            num_workers=workers,
            seed=3,
            multiprocessing_context=context if workers else None,
            persistent_workers=False,
        )
        dm.setup()
        dm.set_epoch(2)
        return dm.train_dataloader()

    ref, par = _batches(loader(0)), _batches(loader(2))
    assert len(ref) == 3
    for a, b in zip(ref, par):
        assert torch.equal(a["X"], b["X"]) and torch.equal(a["y"], b["y"])
        assert a["X"].stride() == b["X"].stride()  # the same time-major block from workers


def _shm_inode(t: torch.Tensor) -> int:
    """The shared-memory file under a batch tensor received from a worker."""
    fd, _ = t.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


@pytest.mark.parametrize("keep", [False, True])
def test_workers_lend_their_blocks_and_fill_them_again_once_given_back(stores, keep, monkeypatch):
    """Workers read batches into blocks they lend to the main process: a block is filled again
    only once the main process has let go of every tensor on it; a consumer that keeps its
    batches gets fresh memory once every block is lent. Either way, the batches of no workers."""
    from train.data import batches

    monkeypatch.setattr(batches, "SLOTS", 2)  # 2 batches per worker (X and y in one block)
    monkeypatch.setattr(batches.BLOCKS, "_pid", -1)

    def loader(workers):
        dm = StoreDataModule(stores["cqt"], target="pitchmidi", batch_size=4, num_workers=workers,
                             seed=3, multiprocessing_context="fork" if workers else None,
                             persistent_workers=False, prefetch_factor=1)  # fmt: skip
        dm.setup()
        return dm.train_dataloader()

    ref = [(b["X"].clone(), b["y"].clone()) for b in loader(0)]
    assert len(ref) > 8
    if not keep:  # epochs in a row: a block is never lent again while a batch on it is held
        for epoch in range(20):
            for i, ((x, y), b) in enumerate(zip(ref, loader(2), strict=True)):
                assert torch.equal(x, b["X"]) and torch.equal(y, b["y"]), (epoch, i)
                del b
    kept, inodes = [], []
    for (x, y), b in zip(ref, loader(2), strict=True):
        assert torch.equal(x, b["X"]) and torch.equal(y, b["y"])
        assert x.stride() == b["X"].stride()
        inodes.append(_shm_inode(b["X"]))
        if keep:
            kept.append(b)
        del b
    if keep:  # nothing given back: every batch in a block of its own, each still as it came
        assert len(set(inodes)) == len(inodes)
        for (x, y), b in zip(ref, kept):
            assert torch.equal(x, b["X"]) and torch.equal(y, b["y"])
    else:  # each worker fills its first blocks again and again
        assert len(set(inodes)) <= 4 < len(inodes)


def test_dataset_pickles_without_its_descriptors_and_maps(stores):
    ds = StoreDataset(stores["lms"])
    ds[0], ds.batch(ds.patch_file[:4], ds.patch_start[:4])
    assert ds.features._maps and ds.features._fds  # made on first use
    size = len(pickle.dumps(ds))
    assert size < 200_000
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone.features._maps and not clone.features._fds and not clone._holds
    assert torch.equal(clone[0]["X"], ds[0]["X"])


def test_mismatches_fail_at_construction_naming_both(stores, demo_small, tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"has no target 'chord'; it has: f0multi, genre, instrument, pitchmidi, tag, title, work-id",
    ):
        StoreDataset(stores["lms"], target="chord")
    with pytest.raises(
        DatasetError,
        match=r"other feature parameters than asked: hop_length: store 1024, asked 512",
    ):
        StoreDataset(stores["lms"], feature={"kind": "lms", "hop_length": 512})
    dm = StoreDataModule(dataset=demo_small, feature="hcqt", stores=tmp_path / "none")
    with pytest.raises(DatasetError) as err:
        dm.prepare_data()
    assert "no hcqt store of demo.pyjama" in str(err.value)
    assert (
        f"precompute run --dataset {demo_small} --feature hcqt --stores {tmp_path / 'none'}"
        in str(err.value)
    )
    dm = StoreDataModule(dataset=demo_small, feature="lms", stores=stores["lms"].parent.parent)
    assert dm.prepare_data() == stores["lms"]


def test_a_chunked_store_is_refused_with_advice(tmp_path):
    p = tmp_path / "chunked.h5"
    with h5py.File(p, "w") as h:
        h.create_dataset("features", data=np.zeros((100, 1, 8), np.float32), chunks=(10, 1, 8))
    with pytest.raises(
        StoreError, match="chunked or compressed and cannot be memory-mapped; re-run precompute"
    ):
        memmap_dataset(p, "features")


def test_samplers():
    s = EpochSampler(10, seed=1, num_samples=25)
    s.set_epoch(0)
    a = s.indices()
    assert len(a) == 25 and set(a[:10].tolist()) == set(range(10))
    s.set_epoch(1)
    assert not np.array_equal(a, s.indices())
    file_work = np.array([0, 0, 1, 1, 1, 2, -1])
    patch_file = np.repeat(np.arange(7), 3)
    ws = WorkBatchSampler(
        patch_file, file_work, works_per_batch=2, versions_per_work=2, batches_per_epoch=5
    )
    for batch in ws:
        works = file_work[patch_file[batch]]
        assert len(batch) == 4 and (np.bincount(works) == 2).sum() == 2
        for w in set(works.tolist()):
            files = patch_file[batch][works == w]
            assert len(set(files.tolist())) == 2
    assert json.dumps(sorted(ws.by_work)) == "[0, 1]"


@pytest.mark.slow
def test_a_float16_store_holds_the_float32_values_rounded(demo_small, tmp_path):
    from common.features import make_feature

    f32 = run(demo_small, "cqt", tmp_path / "s").store_path
    f16 = run(demo_small, make_feature("cqt", {"dtype": "float16"}), tmp_path / "s").store_path
    a, b = direct(f32), direct(f16)
    assert f16 != f32 and b.nbytes == a.nbytes // 2
    assert b.dtype == np.float16 and np.array_equal(b, a.astype(np.float16))
    ds = StoreDataset(f16, target="pitchmidi")
    batch = collate(ds.__getitems__([0, 1, 2]))
    assert ds[0]["X"].dtype == torch.float16 and batch["X"].dtype == torch.float16
    # float16 keeps 11 significant bits: relative error <= 2**-11 on normal values
    normal = a >= np.finfo(np.float16).tiny
    rel = np.abs(b[normal].astype(np.float32) - a[normal]) / a[normal]
    assert rel.max() <= 2**-11


def test_prefetcher_gives_the_loader_batches_in_order_and_stops_early(stores):
    from train.prefetch import Prefetcher

    ds = StoreDataset(stores["lms"], target="genre")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)
    ref = [b["X"].clone() for b in loader]
    with Prefetcher(loader) as it:
        got = [b["X"].clone() for b in it]
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(ref, got))
    it = Prefetcher(loader)
    next(it)
    it.close()  # stopped half way: the thread ends
    assert not it._thread.is_alive()

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise ValueError(f"bad item {i}")

    with (
        pytest.raises(ValueError, match="bad item 0"),
        Prefetcher(torch.utils.data.DataLoader(Broken())) as it,
    ):
        next(it)


def test_files_without_a_label_are_in_no_split(demo_small, tmp_path):
    from train.loop import data_notes

    coll = read_pyjama(demo_small)
    for e in coll.entries[::5]:  # every fifth entry has no dance label, nor notes
        del e.descriptions["genre"]
        del e.descriptions["pitchmidi"]
    p = write_pyjama(coll, tmp_path / "partly.pyjama")
    store = run(p, "lms", tmp_path / "s", audio_root=demo_small.parent).store_path
    unlabelled = {str(e.filepath) for e in coll.entries[::5]}
    for target in ("genre", "pitchmidi"):
        parts = [StoreDataset(store, target=target, split=s) for s in ("train", "valid", "test")]
        seen = {str(n) for d in parts for n in d.tables.names[d.files]}
        assert seen and not seen & unlabelled
        assert parts[0].unlabelled == len(unlabelled)
        assert data_notes(parts[0])[0].startswith(f"{len(unlabelled)} file(s) of the store have no")
        if target == "genre":  # never a -1 in a batch
            ys = torch.cat([collate(d.__getitems__(list(range(len(d)))))["y"] for d in parts])
            assert (ys >= 0).all()
    # without a target, every file is used
    assert len(StoreDataset(store).files) == len(coll.entries)


@pytest.fixture(scope="session")
def two_dtypes(demo_small, tmp_path_factory):
    """The cqt view of ``demo_small`` in float32 and in float16."""
    from common.features import make_feature

    root = tmp_path_factory.mktemp("dtypes")
    return {
        "float32": run(demo_small, "cqt", root).store_path,
        "float16": run(demo_small, make_feature("cqt", {"dtype": "float16"}), root).store_path,
    }


READ_PATHS = ["gather from the map", "reads from the page cache", "reads from the disk"]


def _force(monkeypatch, path: str) -> None:
    """Make the reader take one of its three ways to fill a batch."""
    import train.data.read as reading

    if path != "gather from the map":
        monkeypatch.setattr(reading, "_all_cached", lambda fd, offsets: False)
    if path == "reads from the disk":  # as if nothing were cached: every read a miss
        monkeypatch.setattr(reading, "_read_cached", lambda reads: list(reads))


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_read_path_gives_the_stores_bytes_for_every_unit(
    two_dtypes, dtype, path, monkeypatch
):
    _force(monkeypatch, path)
    store = two_dtypes[dtype]
    feats = direct(store)
    ds = StoreDataset(store, unit="patch", target="pitchmidi")
    idx = np.random.default_rng(0).permutation(len(ds))[:40].tolist()
    expected = _direct_patches(store, ds, idx)
    for batch in (collate(ds.__getitems__(idx)),
                  torch.utils.data.default_collate(ds.__getitems__(idx))):  # fmt: skip
        assert batch["X"].dtype == getattr(torch, dtype)
        np.testing.assert_array_equal(batch["X"].numpy(), expected)
    t = ds.tables
    files = StoreDataset(store, unit="file")
    for f in (0, len(files) - 1):
        whole = files.file_frames("features", np.array([files.files[f]]))[0]
        o = t.offset[files.files[f]]
        np.testing.assert_array_equal(whole, feats[o : o + t.n_frames[files.files[f]]])
    works = StoreDataset(store, unit="work", split=None, versions_per_work=2)
    item = works[0]
    for k, (f, s) in enumerate(zip(item["files"].tolist(), item["starts"].tolist())):
        o = t.offset[f] + s
        got = item["X"][k][..., : item["mask"][k].sum()]
        np.testing.assert_array_equal(
            got.numpy(), ds.feature.patch_input(feats[o : o + got.shape[-1]])
        )


def _rss_mb() -> float:
    """This process's resident memory, anonymous plus file-backed (shared memory apart)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v
    return (int(fields["RssAnon"].split()[0]) + int(fields["RssFile"].split()[0])) / 1024


def _rss_collate(items):
    batch = collate(items)
    batch["rss"] = torch.tensor([os.getpid(), _rss_mb()], dtype=torch.float64)
    return batch


def test_a_workers_memory_does_not_grow_over_an_epoch_of_the_store(tmp_path):
    from .pool_fixture import many_files_view

    # 240 MB of rows in 4 segments, each patch read once: more than twice the bound
    store = many_files_view(str(tmp_path), 480, 1, frames=512, n_mels=256)
    ds = StoreDataset(store, patch_frames=64, patch_hop=64)
    assert len(ds) * ds.patch_frames * ds.tables.frame_bytes > 200 * 2**20
    loader = torch.utils.data.DataLoader(
        ds, batch_size=32, shuffle=True, num_workers=2, collate_fn=_rss_collate,
        multiprocessing_context="fork", generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    first, last = {}, {}
    for b in loader:
        pid, rss = int(b["rss"][0]), float(b["rss"][1])
        first.setdefault(pid, rss)
        last[pid] = rss
    assert len(first) == 2
    for pid in first:
        assert last[pid] - first[pid] < 100, (first, last)


def test_shuffling_by_blocks_covers_every_patch_and_gives_ranks_whole_blocks(stores):
    ds = StoreDataset(stores["cqt"], unit="patch")
    blocks = ds.patch_blocks(block_mb=0.5)
    assert 4 < len(np.unique(blocks)) < len(ds)
    # a block is a stretch of one segment: its patches' bytes are neighbours
    at = np.array([o for _, o, _ in ds.byte_ranges(np.arange(len(ds)))])
    for b in np.unique(blocks):
        assert np.ptp(at[blocks == b]) < 0.5 * 2**20
    s = EpochSampler(len(ds), seed=3, blocks=blocks, blocks_per_draw=2)
    for epoch in (0, 1):
        s.set_epoch(epoch)
        order = s.indices()
        assert sorted(order.tolist()) == list(range(len(ds)))
        # a draw of 2 blocks at a time: the first stretch holds at most 2 blocks
        first = order[: np.bincount(blocks).min()]
        assert len(np.unique(blocks[first])) <= 2
    parts = [
        EpochSampler(len(ds), seed=3, blocks=blocks, rank=r, world=2).indices() for r in (0, 1)
    ]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(ds)))
    assert not set(blocks[parts[0]]) & set(blocks[parts[1]])  # whole blocks per rank
    dm = StoreDataModule(stores["cqt"], unit="patch", batch_size=16, shuffle_block_mb=0.5)
    dm.setup()
    seen = torch.cat([b["X"].flatten(1)[:, :3] for b in dm.train_dataloader()])
    assert len(seen) == len(dm.train_ds) - len(dm.train_ds) % 16  # drop_last, as without blocks


def test_batches_are_pinned_where_they_are_made_and_the_loader_never_pins_again(
    stores, monkeypatch
):
    from train.data import batches
    from train.step import model_input

    asked = []
    take = batches.BLOCKS.take

    def spy(nbytes, pinned=False):
        asked.append(pinned)
        return take(nbytes, False)  # no CUDA here: the request is what is checked

    monkeypatch.setattr(batches.BLOCKS, "take", spy)
    # default: pinned exactly when a CUDA device is there (never a hard-coded GPU)
    assert StoreDataset(stores["lms"], unit="patch").pin_memory == torch.cuda.is_available()
    ds = StoreDataset(stores["lms"], unit="patch", target="genre", pin_memory=True)
    batch = collate(ds.__getitems__([0, 1, 2]))
    assert asked == [True]  # X and y of the batch: one block, asked pinned
    assert batch["X"].untyped_storage().data_ptr() == batch["y"].untyped_storage().data_ptr()
    dm = StoreDataModule(stores["lms"], unit="patch", target="genre", batch_size=4,
                         pin_memory=True)  # fmt: skip
    dm.setup()
    assert dm.train_dataloader().pin_memory is False  # no second copy by the pin thread
    # the step's one copy: the block's bytes as they lie, made float32 and contiguous after
    x = model_input(batch["X"], torch.device("cpu"))
    assert x.dtype == torch.float32 and x.is_contiguous() and torch.equal(x, batch["X"])
