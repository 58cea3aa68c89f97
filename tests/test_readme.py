"""Every command of the README's command table runs as written, its placeholders filled in from
a small dataset (the README says which it leaves out, and why)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import tone, write_wav

ROOT = Path(__file__).parent.parent
NOT_RUN = ("make demo-data", "make features", "torchrun")  # the README says why
# the store the table's `precompute run` makes (hcqt), averaged over time, then one linear map
MEAN_LINEAR = {"name": "MeanLinear", "block_l": [{"sequential_l": [{"layer_l": [
    ["Mean", {"dim": 3}], ["Flatten", {}], ["Linear", {"in_features": -1, "out_features": "n_out"}],
]}]}]}  # fmt: skip


def table_commands() -> list[str]:
    """The commands of the README's command table, optional ``[...]`` parts left out."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    out = []
    for row in table.strip().splitlines()[1:]:
        cell = row.split(" | ")[0].lstrip("| ")
        for cmd in re.findall(r"`([^`]+)`", cell):
            out.append(re.sub(r"\s*\[[^\]]*\]", "", cmd).strip())
    return out


@pytest.fixture(scope="module")
def s3():
    """The object store the table's URL names (a local S3-compatible server)."""
    from .s3server import S3Server

    with S3Server() as server:
        server.make_bucket("readme")
        yield server


@pytest.fixture(scope="module")
def place(tmp_path_factory, demo_small) -> dict[str, str]:
    """What each placeholder stands for, made small."""
    root = tmp_path_factory.mktemp("readme")
    classes = root / "classes"
    for label, midi in (("low", 48), ("high", 72)):
        for i in range(2):
            write_wav(classes / label / f"{label}{i}.wav", tone(midi + i, 2.5))
    labs = root / "labs"
    write_wav(labs / "song.wav", tone(60, 2.5))
    (labs / "song.lab").write_text("0.0 1.2 C\n1.2 2.5 G\n")
    stores = root / "stores"
    exp = root / "X.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "readme", "dataset": {"pyjama": str(demo_small), "stores": str(stores),
                                      "split_fractions": [0.5, 0.25, 0.25]},
        "feature": str(ROOT / "configs/features/hcqt.yaml"), "target": {"name": "genre"},
        "patch": {"frames": 64, "hop": 16}, "model": MEAN_LINEAR,
        "train": {"epochs": 1, "batch_size": 8, "samples_per_epoch": 32, "device": "cpu"},
    }))  # fmt: skip
    return {"D.pyjama": str(demo_small), "STORES": str(stores), "X.yaml": str(exp),
            "DIR --key genre": f"{classes} --key genre", "DIR --key chord": f"{labs} --key chord",
            "OUT.pyjama": str(root / "out.pyjama"), "DAYS": "30", "K": "2", "N": "2", "G": "1",
            "URL": "s3://readme/stores",
            "MODEL.yaml": str(ROOT / "configs/models/lms_classifier.yaml"), "NAME": "reel-000-v0",
            "AUDIO...": str(demo_small.parent / "audio" / "reel-000-v0.wav"),
            "__root__": str(root)}  # fmt: skip


def _fill(cmd: str, place: dict[str, str], found: dict[str, str]) -> list[str]:
    for key, value in [*found.items(), *sorted(place.items(), key=lambda kv: -len(kv[0]))]:
        # a placeholder is a word of its own: N is not the N of RUN_DIR
        cmd = re.sub(rf"(?<![\w/.-]){re.escape(key)}(?![\w])", lambda _, v=value: v, cmd)
    args = shlex.split(cmd)
    if args[0] in ("precompute", "train"):
        args = [sys.executable, "-m", *args]
    elif args[0] == "torchrun":
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", *args[1:]]
    if "train" in args and "run" in args:
        args += ["--out", str(Path(place["__root__"]) / "runs"), "-q"]
    return args


@pytest.mark.slow
def test_every_command_of_the_readmes_table_runs_as_written(place, s3):
    cmds = table_commands()
    assert len(cmds) >= 21 and all(c.split()[0] in ("make", "precompute", "train", "torchrun")
                                   for c in cmds)  # fmt: skip
    # the store and run a later command names come from the ones before: in the table's order,
    # the store first
    cmds.sort(key=lambda c: (not c.startswith("precompute run"), "gc" in c))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **s3.env,
           "MIRPATCH_CACHE_DIR": str(Path(place["__root__"]) / "cache")}  # fmt: skip
    found: dict[str, str] = {}
    ran = []
    for cmd in cmds:
        if cmd.startswith(NOT_RUN):
            continue
        args = _fill(cmd, place, found)
        r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=place["__root__"])
        assert r.returncode == 0, (cmd, args, r.stdout[-1500:], r.stderr[-1500:])
        ran.append(cmd)
        if cmd.startswith("precompute run"):
            found["STORE"] = r.stdout.strip().splitlines()[-1]
        if cmd.startswith("train run") and "--folds" not in cmd and "RUN_DIR" not in found:
            found["RUN_DIR"] = str(next(Path(place["__root__"], "runs").iterdir()))
    assert len(ran) == len(cmds) - len(NOT_RUN)
