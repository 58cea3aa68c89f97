"""Repeats of one experiment, as a result is reported: over seeds, over folds, or both.

    train run --config X.yaml --folds 5 --seeds 0,1,2 [--jobs 2]

makes ``runs/<name>-<time>-folds5-seeds0,1,2/`` with one ordinary run folder per repeat
(``fold-0-seed-1/``, ..., each with the lines it printed in ``log.txt``) and ``summary.json``: per test metric the mean, the standard
deviation (n - 1) and each run's value, and the command that reproduces it all.
``train eval SUMMARY_DIR`` re-scores every run and writes ``summary_<split>.json``.

A run that fails leaves the others and their folders as they are; the summary then counts
only the finished runs, names the failed ones, and the command exits non-zero.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError

SUMMARY = "summary.json"
# counts and settings, not results: kept per run, never averaged
NOT_AVERAGED = {"patches", "files", "queries", "works", "threshold", "loss"}


class RepeatError(UserError):
    """A repeat could not be planned or one of its runs failed."""


@dataclass(frozen=True)
class Repeat:
    label: str  # the run's folder name inside the summary folder
    overrides: tuple[str, ...]  # --set values that make this run


def parse_seeds(text: str | None) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (or a mix) to seeds, in order, each once."""
    if not text:
        return []
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                values = range(int(lo), int(hi) + 1)
            else:
                values = [int(part)]
        except ValueError:
            raise RepeatError(
                f"--seeds: expected integers like 0,1,2 or 0-4, got {text!r}"
            ) from None
        seeds += [v for v in values if v not in seeds]
    if not seeds:
        raise RepeatError(f"--seeds: no seed in {text!r}")
    return seeds


def plan(folds: int | None, seeds: list[int]) -> list[Repeat]:
    """One repeat per fold and seed (fold-major); folds None: the experiment's own split."""
    if folds is not None and folds < 2:
        raise RepeatError(f"--folds must be 2 or more, got {folds}")
    fold_list: list[int | None] = list(range(folds)) if folds else [None]
    seed_list: list[int | None] = list(seeds) or [None]
    out = []
    for k in fold_list:
        for s in seed_list:
            label, sets = [], []
            if k is not None:
                label.append(f"fold-{k}")
                sets += [f"dataset.folds={folds}", f"dataset.fold={k}"]
            if s is not None:
                label.append(f"seed-{s}")
                sets.append(f"train.seed={s}")
            out.append(Repeat("-".join(label), tuple(sets)))
    return out


def command(config: str, overrides, folds: int | None, seeds: list[int], jobs: int) -> str:
    parts = ["train", "run", "--config", str(config)]
    for o in overrides:
        parts += ["--set", o]
    if folds:
        parts += ["--folds", str(folds)]
    if seeds:
        parts += ["--seeds", ",".join(map(str, seeds))]
    if jobs > 1:
        parts += ["--jobs", str(jobs)]
    return shlex.join(parts)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_AVERAGED
    }


def summarize(
    runs: list[dict[str, Any]], command: str, split: str = "test", failed=()
) -> dict[str, Any]:
    """``runs``: ``{"label", "folder", "metrics"}`` each. Per metric that every run has: mean,
    standard deviation (n - 1; 0 for one run), min, max and the values in run order."""
    per_run = [_numbers(r["metrics"]) for r in runs]
    names = [k for k in per_run[0] if all(k in m for m in per_run)] if per_run else []
    table = {}
    for k in names:
        values = [m[k] for m in per_run]
        finite = [v for v in values if math.isfinite(v)]
        table[k] = {
            "mean": float(np.mean(finite)) if finite else math.nan,
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
            "min": min(finite) if finite else math.nan,
            "max": max(finite) if finite else math.nan,
            "values": values,
        }
    return {
        "command": command,
        "split": split,
        "runs": [
            {
                "label": r["label"],
                "folder": str(r["folder"]),
                "files": r["metrics"].get("files"),
                "works": r["metrics"].get("works"),
            }
            for r in runs
        ],
        "failed": list(failed),
        "files": sum(int(r["metrics"].get("files") or 0) for r in runs),
        "metrics": table,
    }


def format_table(summary: dict[str, Any], headline: tuple[str, ...] = ()) -> str:
    """One row per metric (headline metrics first): mean ± std, then the per-run values."""
    rows = summary["metrics"]
    order = [k for k in headline if k in rows] + [k for k in rows if k not in headline]
    labels = [r["label"] for r in summary["runs"]]
    width = max([len(k) for k in order] + [6])
    out = [
        f"{len(labels)} runs, {summary['split']} split ({summary['files']} files in all): "
        + ", ".join(labels),
        f"{'metric':<{width}}  {'mean ± std':>17}  per run",
    ]
    for k in order:
        m = rows[k]
        vals = " ".join(f"{v:.4f}" for v in m["values"])
        out.append(f"{k:<{width}}  {m['mean']:>8.4f} ± {m['std']:<6.4f}  {vals}")
    if summary["failed"]:
        out.append(f"failed: {', '.join(summary['failed'])}")
    out.append(f"reproduce: {summary['command']}")
    return "\n".join(out)


def _run_one(cfg, folder: str, threads: int | None, quiet: bool) -> dict[str, Any]:
    """One repeat (in this process, or a joblib worker with ``threads`` torch threads); its
    log in ``folder/log.txt``."""
    import torch

    from .loop import fit

    if threads:
        torch.set_num_threads(threads)
    folder_p = Path(folder)
    folder_p.mkdir(parents=True, exist_ok=True)
    with open(folder_p / "log.txt", "a") as f:

        def log(m: str) -> None:
            f.write(m + "\n")
            f.flush()
            if not quiet:
                print(f"[{folder_p.name}] {m}", flush=True)

        run = fit(cfg, folder_p.parent, folder=folder_p, progress=False, log=log)
    return run.metrics


def run_repeats(
    config: str,
    overrides: tuple[str, ...],
    folds: int | None,
    seeds: list[int],
    jobs: int = 1,
    out: str | Path = "runs",
    quiet: bool = False,
    log=print,
) -> tuple[Path, dict[str, Any]]:
    """Every repeat into its own folder under one summary folder; the summary."""
    from .experiment import load_experiment

    repeats = plan(folds, seeds)
    cmd = command(config, overrides, folds, seeds, jobs)
    cfgs = [
        load_experiment(config, [*overrides, *r.overrides]) for r in repeats
    ]  # all checked first
    from .data import StoreDataModule

    StoreDataModule.from_experiment(cfgs[0]).prepare_data()  # no store: said once, first
    name = cfgs[0].name
    tags = ([f"folds{folds}"] if folds else []) + (
        [f"seeds{','.join(map(str, seeds))}"] if seeds else []
    )
    top = Path(out) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(tags)}"
    top.mkdir(parents=True, exist_ok=False)
    (top / "command.txt").write_text(cmd + "\n")
    log(f"{len(repeats)} runs into {top}" + (f", {jobs} at a time" if jobs > 1 else ""))
    jobs = max(1, min(jobs, len(repeats)))
    folders = [str(top / r.label) for r in repeats]
    if jobs == 1:
        results = [_safe(cfg, folder, None, quiet) for cfg, folder in zip(cfgs, folders)]
    else:
        from joblib import Parallel, delayed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        results = Parallel(n_jobs=jobs, backend="loky", return_as="list")(
            delayed(_safe)(cfg, folder, threads, quiet) for cfg, folder in zip(cfgs, folders)
        )
    done = [
        {"label": r.label, "folder": f, "metrics": m}
        for r, f, m in zip(repeats, folders, results)
        if isinstance(m, dict)
    ]
    failed = [r.label for r, m in zip(repeats, results) if not isinstance(m, dict)]
    summary = summarize(done, cmd, "test", failed)
    (top / SUMMARY).write_text(json.dumps(summary, indent=1))
    return top, summary


def _safe(cfg, folder, threads, quiet):
    try:
        return _run_one(cfg, folder, threads, quiet)
    except Exception as e:  # returned, not raised: the other runs go on (joblib would cancel them)
        print(f"[{Path(folder).name}] failed: {e}", flush=True)
        return RepeatError(f"{Path(folder).name}: {e}")


def is_summary(folder: str | Path) -> bool:
    return (Path(folder) / SUMMARY).is_file()


def evaluate_summary(
    folder: str | Path, split: str = "test", on: str | Path | None = None
) -> dict[str, Any]:
    """Every run of a summary folder scored again on ``split`` (``summary_<split>.json``), or
    on every file of another dataset ``on`` (``summary_on-<name>.json``)."""
    from .evaluate import evaluate_on, evaluate_run

    folder = Path(folder)
    old = json.loads((folder / SUMMARY).read_text())
    runs = []
    for r in old["runs"]:
        run_dir = folder / Path(r["folder"]).name  # the summary folder may have moved
        metrics = evaluate_on(run_dir, on) if on else evaluate_run(run_dir, split)
        runs.append({"label": r["label"], "folder": str(run_dir), "metrics": metrics})
    name = f"on-{Path(on).stem}" if on else split
    command = old["command"] + (f" && train eval {folder} --on {on}" if on else "")
    summary = summarize(runs, command, name, old.get("failed", ()))
    (folder / f"summary_{name}.json").write_text(json.dumps(summary, indent=1))
    return summary


def task_of(run_dir: str | Path) -> str:
    """The task a run folder trained (from its ``config.yaml``)."""
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["target"]["task"]


def headline_of(summary: dict[str, Any]) -> tuple[str, ...]:
    """The task's headline metrics, from the first run's config."""
    import yaml

    from .tasks import TASKS

    try:
        first = Path(summary["runs"][0]["folder"])
        cfg = yaml.safe_load((first / "config.yaml").read_text())
        return TASKS[cfg["target"]["task"]].headline
    except (IndexError, OSError, KeyError, TypeError):
        return ()
