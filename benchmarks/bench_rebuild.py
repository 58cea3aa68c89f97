"""What a rebuild costs after an edit, as a fraction of a full build, on the demo data.

In one run, through the CLI as a user runs it (``precompute run --jobs 2``, interpreter start
included), into one stores folder:
- T: a full build of the demo data less its last 10 % of files;
- one label edited;
- 10 % more files (the demo's last 14);
- another ``patch_hop`` (``--set patch_hop=16``);
- one audio file overwritten with other audio under the same name.
Each line gives the time, its fraction of T, how many files were computed and reused from the
pool, and the feature bytes written (the growth of the pool's segments; frames already there are
never rewritten: their segments' inodes and sizes are checked). Each view's features and targets
are then compared, byte for byte, with a fresh build of the same request in an empty stores
folder (not timed). Last, the stores folder (the views left out) against the feature bytes of
one fresh full build of the final dataset. ``sync`` runs before every timed build, so that each
starts with no dirty page cache left by the one before.

    .venv/bin/python benchmarks/bench_rebuild.py [--feature hcqt] [--jobs 2]

Works in data/bench-rebuild/ (a copy of the demo audio, since one file gets overwritten).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

DEMO = Path("data/demo")
WORK = Path("data/bench-rebuild")


def cli(pyjama: Path, feature: str, stores: Path, jobs: int, *extra: str) -> tuple[float, dict]:
    os.sync()
    cmd = [".venv/bin/precompute", "run", "--dataset", str(pyjama), "--feature", feature]
    cmd += ["--stores", str(stores), "--jobs", str(jobs), "-q", *extra]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    out = res.stdout.strip().splitlines()
    m = re.search(r"(\d+) computed, (\d+) reused", res.stdout)
    counts = {"computed": int(m[1]), "reused": int(m[2])} if m else {"computed": 0, "reused": -1}
    return took, {**counts, "store": Path(out[-1])}


def write(doc: dict, entries: list, name: str) -> Path:
    p = WORK / f"{name}.pyjama"
    p.write_text(json.dumps({**doc, "collection": {**doc["collection"], "entry": entries}}))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--feature", default="hcqt")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if not (DEMO / "demo.pyjama").exists():
        raise SystemExit("make demo-data first")
    # the project's bytecode, as a normal install has it (this machine sets
    # PYTHONDONTWRITEBYTECODE, which would make every run compile its modules again)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "common", "precompute", "train"])
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.copytree(DEMO / "audio", WORK / "audio")
    doc = json.loads((DEMO / "demo.pyjama").read_text())
    entries = doc["collection"]["entry"]
    n_base = round(len(entries) / 1.1)
    stores = WORK / "stores"
    run = lambda p, *x: cli(p, args.feature, stores, args.jobs, *x)  # noqa: E731

    # every case is one dataset name, so that each store is compared with the fresh build of it
    base = write(doc, entries[:n_base], "dataset")
    T, r = run(base)
    print(f"T: full build of {n_base} files ({args.feature}, --jobs {args.jobs}): {T:.2f} s, "
          f"{r['computed']} computed")  # fmt: skip
    rows = []

    def case(label: str, pyjama: Path, *extra: str, check=None) -> None:
        segs = segments(stores)
        took, r = run(pyjama, *extra)
        after = segments(stores)
        kept = all(after.get(p) == v for p, v in segs.items())  # no existing row rewritten
        written = sum(v[1] for p, v in after.items() if p not in segs)
        fresh = WORK / f"fresh-{len(rows)}"
        _, f = cli(pyjama, args.feature, fresh, args.jobs, *extra)
        same = same_view(r["store"], f["store"])
        note = check(r["store"]) if check else ""
        rows.append((label, took, took / T, r["computed"], r["reused"], written, kept, same, note))
        if label == "one audio file overwritten":
            full["fresh"] = sum(v[1] for v in segments(fresh).values())
        shutil.rmtree(fresh)

    full = {}
    edited = json.loads(json.dumps(entries[:n_base]))
    g = edited[3]["genre"][0]
    g["value"] = next(v for v in ("reel", "jig") if v != g["value"])
    case("one label edited", write(doc, edited, "dataset"))
    case("10 % more files", write(doc, edited + entries[n_base:], "dataset"))
    case("another patch_hop", WORK / "dataset.pyjama", "--set", "patch_hop=16")

    victim = WORK / edited[5]["filepath"][0]["value"]
    before = file_frames(latest_store(stores), victim.name)
    y, sr = sf.read(WORK / edited[40]["filepath"][0]["value"], dtype="int16")
    sf.write(victim, y[::-1], sr)  # other audio: another tune, reversed (no such content exists)
    case(
        "one audio file overwritten",
        WORK / "dataset.pyjama",
        check=lambda store: (
            "its frames changed: " + str(not frames_equal(before, file_frames(store, victim.name)))
        ),
    )
    print(f"{'case':28s} {'s':>6s} {'of T':>6s} computed reused  feature MB written  "
          "old frames untouched  identical to a fresh build")  # fmt: skip
    for label, took, frac, comp, reused, written, kept, same, note in rows:
        print(f"{label:28s} {took:6.2f} {frac:6.3f} {comp:8d} {reused:6d}  {written / 1e6:17.1f}  "
              f"{str(kept):18s}  {same}  {note}")  # fmt: skip
    views = sum(p.stat().st_size for p in stores.glob("dataset/*.h5"))
    folder = sum(p.stat().st_size for p in stores.rglob("*") if p.is_file()) - views
    print(
        f"stores folder without its {len(list(stores.glob('dataset/*.h5')))} views: "
        f"{folder / 1e6:.1f} MB for {full['fresh'] / 1e6:.1f} MB of features in one fresh full "
        f"build ({folder / full['fresh']:.3f}x); the views: {views / 1e6:.1f} MB"
    )


def segments(stores: Path) -> dict[Path, tuple[int, int]]:
    """Each segment of the pool: (inode, size)."""
    return {p: (p.stat().st_ino, p.stat().st_size) for p in stores.glob("pool/*/seg-*.h5")}


def same_view(a: Path, b: Path) -> bool:
    """The same features (read through each view) and the same targets and tables."""
    import h5py
    import numpy as np

    from common.store import read_features

    if not np.array_equal(read_features(a), read_features(b)):
        return False
    where = {"segments/path", "segments/features_at", "segments/frames", "files/segment",
             "files/first", "features"}  # fmt: skip
    with h5py.File(a) as ha, h5py.File(b) as hb:
        names = []
        ha.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return all(np.array_equal(ha[n][()], hb[n][()]) for n in names if n not in where)


def latest_store(stores: Path) -> Path:
    return max((stores / "dataset").glob("*.h5"), key=lambda p: p.stat().st_mtime)


def file_frames(store: Path, name: str):
    from common.store import read_frames, read_tables

    t = read_tables(store)
    i = [Path(n).name for n in t.names].index(name)
    return read_frames(t, i)


def frames_equal(a, b) -> bool:
    return a.shape == b.shape and (a == b).all()


if __name__ == "__main__":
    main()
