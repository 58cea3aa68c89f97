"""mirpatch as a user receives it: the wheel, installed (not editable) into a fresh virtual
environment with no source tree on its path, has every package and every shipped config, and
its commands compute a store and train an epoch there, from a folder of the user's own.

Only mirpatch comes from the wheel: the dependencies are the test's own environment's, put on
the new environment's path after the install, so that the test needs no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = ("common", "precompute", "train")
# what `pip wheel` builds from; everything else of the checkout stays out of the build's way
SOURCES = (*PACKAGES, "configs", "pyproject.toml", "README.md")


def checkout_modules() -> set[str]:
    """Every module of the checkout's packages, dotted (``common.store.read``)."""
    out = set()
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def checkout_configs() -> set[str]:
    return {f"configs/{p.relative_to(ROOT / 'configs').as_posix()}"
            for p in (ROOT / "configs").rglob("*.yaml")}  # fmt: skip


def build_wheel(dest: Path, sources: Path) -> Path:
    """``pip wheel`` of a copy of the checkout's sources (the build writes into the tree it
    builds), offline: with this environment's setuptools, no build isolation."""
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, sources / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        else:
            shutil.copy2(src, sources / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(dest), str(sources)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = dest.glob("mirpatch-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    """A new virtual environment with the wheel installed in it and this environment's packages
    after it on the path; returns its ``bin/``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)  # fmt: skip
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)  # fmt: skip
    # the dependencies; a path a .pth names is only appended to sys.path (its own .pth files,
    # among them the editable install of this checkout, are not run)
    Path(site.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
    return venv / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    return install(build_wheel(root / "dist", root / "src"), root / "venv")


def run(bin_: Path, *args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(bin_ / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


def test_the_wheel_holds_every_package_and_config_of_the_checkout(installed, tmp_path):
    probe = """if True:
        import json, pkgutil, common, precompute, train
        mods, files = set(), []
        for pkg in (common, precompute, train):
            files.append(pkg.__file__)
            mods.add(pkg.__name__)
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                mods.add(m.name)
        print(json.dumps({"modules": sorted(mods), "files": files}))
    """
    got = json.loads(run(installed, "python", "-c", probe, cwd=tmp_path))
    venv = installed.parent.resolve()
    assert all(Path(f).resolve().is_relative_to(venv) for f in got["files"]), got["files"]
    missing = checkout_modules() - set(got["modules"])
    assert not missing, f"modules the wheel lacks: {sorted(missing)}"
    shipped = set(run(installed, "train", "configs", cwd=tmp_path).split())
    assert shipped == checkout_configs(), ("configs the wheel lacks, adds",
                                           checkout_configs() - shipped, shipped - checkout_configs())  # fmt: skip


def test_the_installed_commands_compute_a_store_and_train_an_epoch(installed, tmp_path, demo_small):
    assert "Usage: precompute" in run(installed, "precompute", "--help", cwd=tmp_path)
    assert "Usage: train" in run(installed, "train", "--help", cwd=tmp_path)
    # the feature by its shipped name, the experiment and its model by their repository paths
    out = run(installed, "precompute", "run", "--dataset", str(demo_small), "--feature", "lms",
              "--stores", "stores", cwd=tmp_path)  # fmt: skip
    assert Path(tmp_path, out.strip().splitlines()[-1]).is_file()
    run(installed, "train", "run", "--config", "configs/experiments/demo_instrument.yaml",
        "--set", f"dataset.pyjama={demo_small}", "--set", "dataset.split_fractions=[0.5,0.25,0.25]",
        "--set", "train.epochs=1",
        "--set", "train.samples_per_epoch=64", "--set", "train.device=cpu", "-q", cwd=tmp_path)  # fmt: skip
    (folder,) = (tmp_path / "runs").iterdir()  # ./runs and ./stores: the shipped config's paths
    assert (folder / "best.pt").is_file() and (folder / "metrics_test.json").is_file()
    summary = run(installed, "train", "summary", "configs/models/pitch_salience.yaml",
                  "--input-shape", "6,360,64", cwd=tmp_path)  # fmt: skip
    assert "total parameters" in summary
