"""The on-disk format of shards and stores: the one module that knows HDF5 paths.

A **shard** holds the computed files of one precompute task. A **store** is
the merge of all shards of one (dataset, feature) pair, one ``.h5`` file::

    /features              float32 (total_frames, C, F), contiguous, uncompressed, time-major
    /files/name            str  (n_files,)   the pyjama filepath
    /files/entry           int32            index of the entry in the pyjama
    /files/offset          int64            first frame of the file in /features
    /files/n_frames        int64
    /files/duration_s      float64
    /files/orig_sr         int32            sample rate of the audio file
    /files/checksum        str              sha1 of the audio file's bytes
    /patches/file          int32 (n_patches,)  default patch index: file and
    /patches/start         int64               start frame within the file
    /targets/<name>        one dataset per pyjama description (attrs: kind, vocabulary, ...)
                           per file: (n_files, ...); frame level: (total_frames, ...) aligned with /features
    attrs                  format_version, feature (JSON), feature_hash, store_hash,
                           pyjama_sha1, dataset, versions (JSON), failed (JSON), warnings (JSON)

Writers rename into place only complete files, so a crash never leaves a
half-written shard or store under its final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1
FEATURE_DTYPE = np.dtype("<f4")

# Target kinds with one row per feature frame (the others have one row per file:
# class, multilabel, value, work).
FRAME_KINDS = ("frame_class", "frame_events", "frame_pitch", "frame_value")


class StoreError(Exception):
    """A store or shard that cannot be used as it is; the message says what to do."""


def store_identity(feature_params: dict[str, Any], entries_json: list[dict]) -> str:
    """The store hash: feature parameters, the dataset's entries and the format version.

    The same request finds the same store; a change of any of them makes another, never a mix.
    """
    from .features import params_hash

    return params_hash(
        {"feature": feature_params, "entries": params_hash(entries_json), "format": FORMAT_VERSION}
    )[:16]


def store_path(
    stores: str | os.PathLike, dataset_name: str, feature_kind: str, identity: str
) -> Path:
    """``STORES/<dataset>/<feature>-<hash>.h5``."""
    return Path(stores) / dataset_name / f"{feature_kind}-{identity}.h5"


@dataclass
class TargetSpec:
    """How one pyjama description becomes a target array."""

    name: str
    kind: str
    vocabulary: list[str] = field(default_factory=list)  # labels, work ids, or row names
    pitch_midi: list[float] = field(default_factory=list)  # frame_pitch: MIDI of each bin
    unit: str = ""  # frame_pitch: "midi" or "hz"

    @property
    def frame_level(self) -> bool:
        return self.kind in FRAME_KINDS

    def to_attrs(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocabulary": json.dumps(self.vocabulary),
            "pitch_midi": json.dumps(self.pitch_midi),
            "unit": self.unit,
        }

    @classmethod
    def from_attrs(cls, name: str, attrs: Any) -> TargetSpec:
        return cls(
            name,
            str(attrs["kind"]),
            json.loads(attrs["vocabulary"]),
            json.loads(attrs["pitch_midi"]),
            str(attrs["unit"]),
        )


@dataclass
class FileRecord:
    """One computed file, as a task hands it to its shard."""

    entry: int
    name: str
    feature: np.ndarray  # time-major (n_frames, C, F) float32
    frame_targets: dict[str, np.ndarray]  # time-major (n_frames, ...)
    duration_s: float
    orig_sr: int
    checksum: str
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.feature.shape[0])


def _atomic_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _fsync_replace(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete ``*.tmp-<pid>`` files left by a killed writer (call under the store lock)."""
    n = 0
    if folder.is_dir():
        for p in folder.glob("*.tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


# ---------------------------------------------------------------------------
# Shards


def write_shard(
    path: str | os.PathLike, records: list[FileRecord], failures: list[dict], feature_hash: str
) -> Path:
    """Write one task's files; the shard exists under ``path`` only once complete."""
    path = Path(path)
    tmp = _atomic_path(path)
    with h5py.File(tmp, "w") as h:
        h.attrs.update(
            format_version=FORMAT_VERSION, feature_hash=feature_hash, failures=json.dumps(failures)
        )
        h.attrs["n_files"] = len(records)
        for k, r in enumerate(records):
            g = h.create_group(f"file_{k:05d}")
            g.attrs.update(
                entry=r.entry,
                name=r.name,
                duration_s=r.duration_s,
                orig_sr=r.orig_sr,
                checksum=r.checksum,
                warnings=json.dumps(r.warnings),
            )
            g.create_dataset("feature", data=np.ascontiguousarray(r.feature, dtype=FEATURE_DTYPE))
            for name, arr in r.frame_targets.items():
                g.create_dataset(f"targets/{name}", data=arr)
    _fsync_replace(tmp, path)
    return path


@dataclass
class ShardFile:
    """A file's metadata in a shard; its arrays are read only when merged."""

    shard: Path
    group: str
    entry: int
    name: str
    n_frames: int
    duration_s: float
    orig_sr: int
    checksum: str
    warnings: list[str]


def read_shard_index(
    path: str | os.PathLike, feature_hash: str
) -> tuple[list[ShardFile], list[dict]]:
    """The files and failures a shard holds, without reading its arrays."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as h:
            if (
                h.attrs.get("feature_hash") != feature_hash
                or h.attrs.get("format_version") != FORMAT_VERSION
            ):
                raise StoreError(f"{path}: shard of other feature parameters or format; delete it")
            files = []
            for k in range(int(h.attrs["n_files"])):
                g = h[f"file_{k:05d}"]
                a = g.attrs
                files.append(
                    ShardFile(
                        path,
                        g.name,
                        int(a["entry"]),
                        str(a["name"]),
                        int(g["feature"].shape[0]),
                        float(a["duration_s"]),
                        int(a["orig_sr"]),
                        str(a["checksum"]),
                        json.loads(a["warnings"]),
                    )
                )
            return files, json.loads(h.attrs["failures"])
    except OSError as e:
        raise StoreError(f"{path}: unreadable shard ({e}); delete it and re-run") from None


# ---------------------------------------------------------------------------
# Store: writer


def _create_contiguous(h: h5py.File, name: str, shape: tuple, dtype: np.dtype) -> h5py.Dataset:
    """A contiguous, uncompressed dataset whose bytes are allocated now, never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(shape)
    parent_name, _, leaf = name.rpartition("/")
    parent = h.require_group(parent_name) if parent_name else h
    tid = h5py.h5t.py_create(np.dtype(dtype))
    dsid = h5py.h5d.create(parent.id, leaf.encode(), tid, space, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _empty_frame_target(spec: TargetSpec, n: int) -> tuple[tuple, np.dtype]:
    if spec.kind == "frame_class":
        return (n,), np.dtype("<i4")
    if spec.kind == "frame_value":
        return (n, len(spec.vocabulary)), np.dtype("<f4")
    width = len(spec.pitch_midi) if spec.kind == "frame_pitch" else max(1, len(spec.vocabulary))
    return (n, width), np.dtype("u1")


def merge_shards(
    files: list[ShardFile],
    out_path: str | os.PathLike,
    frame_shape: tuple[int, int],
    patch_frames: int,
    patch_hop: int,
    targets: list[TargetSpec],
    file_targets: dict[str, np.ndarray],
    attrs: dict[str, Any],
) -> Path:
    """Write the store from shard files (in the order given), renamed into place when complete.

    ``file_targets`` holds the per-file target arrays, rows in the order of ``files``.
    Feature and frame-target bytes go from shard to store without passing through Python,
    so memory does not grow with the store.
    """
    out_path = Path(out_path)
    n_frames = np.array([f.n_frames for f in files], dtype=np.int64)
    offsets = (
        np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(np.int64) if files else n_frames
    )
    total = int(n_frames.sum())
    tmp = _atomic_path(out_path)
    str_dt = h5py.string_dtype("utf-8")
    try:
        # 1. lay out the store: big datasets allocated (not written), tables and attributes written
        big: dict[
            str, tuple[int, np.dtype, int]
        ] = {}  # name -> (file offset, dtype, bytes per frame)
        with h5py.File(tmp, "w", libver="latest") as h:
            layouts = {"features": ((total, *frame_shape), FEATURE_DTYPE)}
            for spec in targets:
                if spec.frame_level:
                    layouts[f"targets/{spec.name}"] = _empty_frame_target(spec, total)
            for name, (shape, dt) in layouts.items():
                ds = _create_contiguous(h, name, shape, dt)
                big[name] = (
                    ds.id.get_offset(),
                    np.dtype(dt),
                    int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dt).itemsize,
                )
            h.create_dataset("files/name", data=[f.name for f in files], dtype=str_dt)
            h.create_dataset("files/entry", data=np.array([f.entry for f in files], dtype=np.int32))
            h.create_dataset("files/offset", data=offsets)
            h.create_dataset("files/n_frames", data=n_frames)
            h.create_dataset(
                "files/duration_s", data=np.array([f.duration_s for f in files], dtype=np.float64)
            )
            h.create_dataset(
                "files/orig_sr", data=np.array([f.orig_sr for f in files], dtype=np.int32)
            )
            h.create_dataset("files/checksum", data=[f.checksum for f in files], dtype=str_dt)
            pf, ps = patch_index(n_frames, patch_frames, patch_hop)
            h.create_dataset("patches/file", data=pf)
            h.create_dataset("patches/start", data=ps)
            for spec in targets:
                if not spec.frame_level:
                    h.create_dataset(f"targets/{spec.name}", data=file_targets[spec.name])
                h[f"targets/{spec.name}"].attrs.update(spec.to_attrs())
            h.require_group("targets")
            h.attrs.update(
                {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in attrs.items()}
            )
            h.attrs["format_version"] = FORMAT_VERSION
            h.attrs["patch_frames"] = patch_frames
            h.attrs["patch_hop"] = patch_hop
        # 2. fill the big datasets with the shards' bytes: both sides are contiguous, so a
        #    file's feature is one byte range copied by the kernel, never decoded
        by_shard: dict[Path, list[tuple[ShardFile, int]]] = {}
        for f, off in zip(files, offsets):
            if f.n_frames:
                by_shard.setdefault(f.shard, []).append((f, int(off)))
        dst = os.open(tmp, os.O_WRONLY)
        try:
            for shard, members in by_shard.items():
                ranges = []
                with h5py.File(shard, "r") as sh:
                    for f, off in members:
                        g = sh[f.group]
                        for name, (dst_off, dt, frame_bytes) in big.items():
                            src = g["feature"] if name == "features" else g[name]
                            if (
                                src.dtype != dt
                                or src.chunks is not None
                                or src.id.get_offset() is None
                            ):
                                raise StoreError(
                                    f"{shard}: {f.group}/{name} is not a contiguous {dt} array"
                                )
                            ranges.append(
                                (
                                    src.id.get_offset(),
                                    dst_off + off * frame_bytes,
                                    f.n_frames * frame_bytes,
                                )
                            )
                src_fd = os.open(shard, os.O_RDONLY)
                try:
                    for src_off, dst_off, n in ranges:
                        _copy_range(src_fd, dst, src_off, dst_off, n)
                finally:
                    os.close(src_fd)
        finally:
            os.close(dst)
        _fsync_replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def _copy_range(src: int, dst: int, src_off: int, dst_off: int, n: int) -> None:
    """Copy ``n`` bytes between file descriptors at the given offsets (in the kernel when it can)."""
    while n > 0:
        try:
            done = os.copy_file_range(src, dst, n, src_off, dst_off)
        except (AttributeError, OSError):
            data = os.pread(src, min(n, 1 << 26), src_off)
            done = os.pwrite(dst, data, dst_off)
        if done <= 0:
            raise StoreError(f"short copy while merging ({n} bytes left)")
        src_off, dst_off, n = src_off + done, dst_off + done, n - done


def patch_index(
    n_frames: np.ndarray, patch_frames: int, patch_hop: int
) -> tuple[np.ndarray, np.ndarray]:
    """All patch starts of every file, vectorised: ``(file [int32], start frame [int64])``.

    A file shorter than ``patch_frames`` has no patch.
    """
    n_frames = np.asarray(n_frames, dtype=np.int64)
    per_file = np.where(n_frames >= patch_frames, (n_frames - patch_frames) // patch_hop + 1, 0)
    file_idx = np.repeat(np.arange(len(n_frames), dtype=np.int32), per_file)
    first = np.concatenate([[0], np.cumsum(per_file)[:-1]]) if len(per_file) else per_file
    start = (
        np.arange(int(per_file.sum()), dtype=np.int64) - np.repeat(first, per_file)
    ) * patch_hop
    return file_idx, start


# ---------------------------------------------------------------------------
# Store: reader


@dataclass
class StoreTables:
    """Everything of a store but its big arrays, as numpy, loaded once."""

    path: Path
    attrs: dict[str, Any]
    feature: dict[str, Any]
    names: np.ndarray
    entry: np.ndarray
    offset: np.ndarray
    n_frames: np.ndarray
    duration_s: np.ndarray
    patch_file: np.ndarray
    patch_start: np.ndarray
    targets: dict[str, TargetSpec]
    frame_shape: tuple[int, int]
    total_frames: int

    @property
    def n_files(self) -> int:
        return len(self.names)

    @property
    def patch_frames(self) -> int:
        return int(self.attrs["patch_frames"])

    @property
    def patch_hop(self) -> int:
        return int(self.attrs["patch_hop"])


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_tables(path: str | os.PathLike) -> StoreTables:
    """Open a store, check its format and load its tables (not its features)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such store")
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 store ({e}); re-run precompute") from None
    with h:
        attrs = {k: _decode(v) for k, v in h.attrs.items()}
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format {attrs.get('format_version')}, this mirpatch reads {FORMAT_VERSION}; re-run precompute"
            )
        f = h["files"]
        feats = h["features"]
        targets = {n: TargetSpec.from_attrs(n, ds.attrs) for n, ds in h["targets"].items()}
        return StoreTables(
            path=path,
            attrs=attrs,
            feature=attrs["feature"],
            names=f["name"].asstr()[()],
            entry=f["entry"][()],
            offset=f["offset"][()],
            n_frames=f["n_frames"][()],
            duration_s=f["duration_s"][()],
            patch_file=h["patches/file"][()],
            patch_start=h["patches/start"][()],
            targets=targets,
            frame_shape=tuple(feats.shape[1:]),
            total_frames=int(feats.shape[0]),
        )


def memmap_dataset(path: str | os.PathLike, name: str) -> np.memmap | np.ndarray:
    """Map a contiguous dataset of the store read-only, without h5py on the read path.

    Fails with a clear error when the dataset is chunked, compressed, or not
    little-endian, since those cannot be mapped.
    """
    path = Path(path)
    with h5py.File(path, "r") as h:
        ds = h[name]
        if ds.chunks is not None or ds.compression is not None:
            raise StoreError(
                f"{path}: '{name}' is chunked or compressed and cannot be memory-mapped; re-run precompute"
            )
        if ds.dtype.byteorder == ">":
            raise StoreError(f"{path}: '{name}' is big-endian; re-run precompute on this machine")
        shape, dtype = ds.shape, ds.dtype
        offset = ds.id.get_offset()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    if offset is None:
        raise StoreError(f"{path}: '{name}' has no storage allocated; re-run precompute")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_file_targets(path: str | os.PathLike, names: Iterable[str]) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h:
        return {n: h[f"targets/{n}"][()] for n in names}


def iter_feature_blocks(path: str | os.PathLike, block_frames: int = 65536) -> Iterator[np.ndarray]:
    """The feature dataset in blocks of frames (for verification without loading it all)."""
    with h5py.File(path, "r") as h:
        ds = h["features"]
        for s in range(0, ds.shape[0], block_frames):
            yield ds[s : s + block_frames]


def dataset_layouts(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per dataset: shape, dtype, chunks, compression (for ``precompute info``/``verify``)."""
    out = {}
    with h5py.File(path, "r") as h:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = {
                    "shape": obj.shape,
                    "dtype": str(obj.dtype),
                    "chunks": obj.chunks,
                    "compression": obj.compression,
                    "offset": obj.id.get_offset(),
                }

        h.visititems(visit)
    return out
