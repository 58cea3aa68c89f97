"""What a rebuild costs after an edit, as a fraction of a full build, on the demo data.

In one run, through the CLI as a user runs it (``precompute run --jobs 2``, interpreter start
included), into one stores folder:
- T: a full build of the demo data less its last 10 % of files;
- one label edited;
- 10 % more files (the demo's last 14);
- another ``patch_hop`` (``--set patch_hop=16``);
- one audio file overwritten with other audio under the same name.
Each line gives the time, its fraction of T, and how many files were computed and copied; each
store is then compared, byte for byte, with a fresh build of the same request in an empty stores
folder (not timed). ``sync`` runs before every timed build, so that each starts with no dirty
page cache left by the one before.

    .venv/bin/python benchmarks/bench_rebuild.py [--feature hcqt] [--jobs 2]

Works in data/bench-rebuild/ (a copy of the demo audio, since one file gets overwritten).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import subprocess
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
    m = re.search(r"(\d+) computed, (\d+) copied", res.stdout)
    counts = {"computed": int(m[1]), "copied": int(m[2])} if m else {"computed": 0, "copied": 0}
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
        took, r = run(pyjama, *extra)
        fresh = WORK / f"fresh-{len(rows)}"
        _, f = cli(pyjama, args.feature, fresh, args.jobs, *extra)
        same = filecmp.cmp(r["store"], f["store"], shallow=False)
        note = check(r["store"]) if check else ""
        rows.append((label, took, took / T, r["computed"], r["copied"], same, note))
        shutil.rmtree(fresh)

    edited = json.loads(json.dumps(entries[:n_base]))
    g = edited[3]["genre"][0]
    g["value"] = next(v for v in ("reel", "jig") if v != g["value"])
    case("one label edited", write(doc, edited, "dataset"))
    case("10 % more files", write(doc, edited + entries[n_base:], "dataset"))
    case("another patch_hop", WORK / "dataset.pyjama", "--set", "patch_hop=16")

    victim = WORK / edited[5]["filepath"][0]["value"]
    before = read_rows(rows_store(stores), victim.name)
    y, sr = sf.read(WORK / edited[40]["filepath"][0]["value"], dtype="int16")
    sf.write(victim, y[::-1], sr)  # other audio: another tune, reversed (no such content exists)
    case(
        "one audio file overwritten",
        WORK / "dataset.pyjama",
        check=lambda store: (
            "its rows changed: " + str(not rows_equal(before, read_rows(store, victim.name)))
        ),
    )
    print(f"{'case':28s} {'s':>6s} {'of T':>6s} computed copied  identical to a fresh build")
    for label, took, frac, comp, copied, same, note in rows:
        print(f"{label:28s} {took:6.2f} {frac:6.3f} {comp:8d} {copied:6d}  {same}  {note}")


def rows_store(stores: Path) -> Path:
    return max((stores / "dataset").glob("*.h5"), key=lambda p: p.stat().st_mtime)


def read_rows(store: Path, name: str):
    from common.store import memmap_dataset, read_tables

    t = read_tables(store)
    i = [Path(n).name for n in t.names].index(name)
    return memmap_dataset(store, "features")[t.offset[i] : t.offset[i] + t.n_frames[i]].copy()


def rows_equal(a, b) -> bool:
    return a.shape == b.shape and (a == b).all()


if __name__ == "__main__":
    main()
