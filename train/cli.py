"""``train``: inspect YAML models (and, with the trainer, train, evaluate and predict)."""

from __future__ import annotations

import sys

import click

from common.cli import Group
from common.config import ConfigError


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train YAML-described models on patches read from precomputed stores."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers like 1,128,64, got {text!r}"
        ) from None
    if not shape or any(v <= 0 for v in shape):
        raise click.BadParameter(f"sizes must be positive, got {text!r}")
    return shape


@main.command("summary")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--input-shape", required=True, help="one item's X shape without batch, e.g. 1,128,64"
)
@click.option("--n-out", type=int, help="output size for 'n_out' (the target's classes)")
def summary_cmd(config: str, input_shape: str, n_out: int | None) -> None:
    """Each layer's output shape and parameter count, and the total, for a model YAML."""
    from .model_factory import ModelConfigError, build_model, format_summary

    shape = _shape(input_shape)
    try:
        model = build_model(config, shape, n_out=n_out)
    except (ModelConfigError, ConfigError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(format_summary(model, shape))


@main.command("configs")
@click.option(
    "--copy",
    "to",
    type=click.Path(file_okay=False),
    help="copy them into TO/configs/, to edit (files already there are kept)",
)
def configs_cmd(to: str | None) -> None:
    """The configs shipped with mirpatch (features, models, experiments, dataset templates),
    each by the name that ``--config``, ``precompute run --feature`` and ``train summary`` take
    where no file of that name is in the current folder."""
    import shutil
    from pathlib import Path

    from common.config import SHIPPED, shipped_configs

    for name in shipped_configs():
        if to is None:
            click.echo(name)
            continue
        dest = Path(to) / name
        if dest.exists():
            click.echo(f"kept {dest}")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED / name.removeprefix("configs/"), dest)
        click.echo(f"wrote {dest}")


@main.command("run")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="experiment YAML (a file, or "
    "a shipped config by its path in the repository: `train configs` lists them)",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a value, e.g. train.lr=0.001",
)
@click.option(
    "--out",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="where run folders go",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    help="a run folder to continue from last.pt",
)
@click.option(
    "--stop-after-epochs", type=int, help="end this invocation after N epochs (resume later)"
)
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
@click.option(
    "--seeds", help="train once per seed (train.seed), e.g. 0,1,2 or 0-4; a summary of all"
)
@click.option(
    "--folds",
    type=int,
    help="K-fold cross-validation by work (by file where there are no works): K runs, each "
    "work tested once; a summary of all",
)
@click.option("--jobs", type=int, default=1, show_default=True, help="repeats run side by side")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="a remote store's local cache (default MIRPATCH_CACHE_DIR, ~/.cache/mirpatch)",
)
@click.option(
    "--cache-gb",
    type=float,
    help="the cache's size limit (default MIRPATCH_CACHE_GB, 50); the run records it, since a "
    "store larger than the cache is read in an order that depends on it",
)
def run_cmd(
    config,
    overrides,
    out,
    resume,
    stop_after_epochs,
    quiet,
    seeds,
    folds,
    jobs,
    cache_dir,
    cache_gb,
) -> None:
    """Train an experiment: checkpoints, metrics.csv, plots and test metrics in a run folder.
    With --seeds or --folds: one run folder per repeat and a summary (mean ± std). A store on
    object storage (dataset.stores: s3://bucket/prefix) is read through a local cache
    (--cache-dir: this machine's, not part of the run's config; --cache-gb)."""
    import os
    from pathlib import Path

    import yaml

    if cache_dir:
        os.environ["MIRPATCH_CACHE_DIR"] = str(Path(cache_dir).absolute())
    if cache_gb is not None:
        os.environ["MIRPATCH_CACHE_GB"] = str(cache_gb)

    from .experiment import load_experiment, reload_resolved
    from .loop import fit

    try:
        if seeds is not None or folds is not None:
            from . import repeats

            if resume or stop_after_epochs:
                raise click.UsageError("--seeds/--folds run whole repeats; drop --resume and "
                                       "--stop-after-epochs")  # fmt: skip
            if not config:
                raise click.UsageError("--seeds/--folds need --config EXPERIMENT.yaml")
            top, summary = repeats.run_repeats(
                config,
                overrides,
                folds,
                repeats.parse_seeds(seeds),
                jobs,
                out,
                quiet,
                log=lambda m: click.echo(m),
            )
            click.echo(repeats.format_table(summary, repeats.headline_of(summary)))
            click.echo(f"summary: {top / repeats.SUMMARY}")
            if summary["failed"]:
                sys.exit(1)
            return
        if jobs != 1:
            raise click.UsageError("--jobs runs repeats side by side; give --seeds or --folds")
        if resume:
            if overrides or config:
                raise click.UsageError(
                    "--resume takes the run folder's own config; drop --config and --set"
                )
            cfg = reload_resolved(yaml.safe_load((Path(resume) / "config.yaml").read_text()))
        elif config:
            cfg = load_experiment(config, overrides)
        else:
            raise click.UsageError("give --config EXPERIMENT.yaml, or --resume RUN_DIR")
        fit(
            cfg,
            out,
            resume=resume,
            stop_after_epochs=stop_after_epochs,
            progress=not quiet,
            log=lambda m: click.echo(m),
        )
    except KeyboardInterrupt:  # the run has said where it is and how to go on
        sys.exit(130)


@main.command("baseline")
@click.option("--config", required=True, type=click.Path(dir_okay=False), help="experiment YAML")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a value")
@click.option("--folds", type=int, help="each fold's test split, as `train run --folds K` makes it")
@click.option(
    "--on", type=click.Path(exists=True, dir_okay=False), help="every file of another dataset"
)
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False))
def baseline_cmd(config, overrides, folds, on, out) -> None:
    """The training-free cover-song baseline (the 2D Fourier magnitude of beat-synchronous
    chroma, from the experiment's CQT store) on the files `train run` tests: the experiment's
    test split, the test split of each of --folds K folds, or every file of --on PYJAMA. Mean ±
    std over folds, written to OUT/baseline-<name>....json."""
    import dataclasses
    import json
    from pathlib import Path

    from . import baselines, repeats
    from .data import StoreDataset
    from .experiment import load_experiment

    cfg = load_experiment(config, list(overrides))
    if cfg.target.task != "work":
        raise click.UsageError(f"{config}: the baseline scores work identification, this "
                               f"experiment's task is {cfg.target.task!r}")  # fmt: skip
    runs = []
    if on:
        d = dataclasses.replace(cfg.dataset, pyjama=str(Path(on).absolute()), folds=None,
                                fold=None, split_key=None, train_works=None)  # fmt: skip
        ds = StoreDataset.from_experiment(dataclasses.replace(cfg, dataset=d), split=None)
        runs.append({"label": f"on-{Path(on).stem}", "folder": "", "metrics": baselines.score(ds)})
    for k in range(folds) if folds and not on else ([None] if not on else []):
        sets = [f"dataset.folds={folds}", f"dataset.fold={k}"] if k is not None else []
        ds = StoreDataset.from_experiment(config, split="test", overrides=[*overrides, *sets])
        label = f"fold-{k}" if k is not None else "test"
        runs.append({"label": label, "folder": "", "metrics": baselines.score(ds)})
        click.echo(f"{label}: MAP {runs[-1]['metrics']['MAP']:.4f}")
    args = " ".join(f"--set {o}" for o in overrides)
    command = f"train baseline --config {config} {args}".strip() + (
        f" --folds {folds}" if folds else "") + (f" --on {on}" if on else "")  # fmt: skip
    split = runs[0]["label"] if on else "test"
    summary = repeats.summarize(runs, command, split)
    click.echo(repeats.format_table(summary, ("MAP", "MRR", "P@1", "P@10", "mean_rank")))
    name = f"baseline-{cfg.name}" + (f"-folds{folds}" if folds else "") + (
        f"-on-{Path(on).stem}" if on else "")  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps(summary, indent=1))
    click.echo(f"summary: {Path(out) / f'{name}.json'}")


@main.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True
)
@click.option(
    "--on",
    type=click.Path(exists=True, dir_okay=False),
    help="another dataset's pyjama: every file of it, scored (cross-dataset); its store must "
    "be built with the run's feature",
)
@click.option("--json", "as_json", is_flag=True, help="print every metric as JSON instead")
def eval_cmd(run_dir: str, split: str, on: str | None, as_json: bool) -> None:
    """A run's best weights scored on a split: a table of the headline metrics (and the
    recall of each class), every metric in RUN_DIR/metrics_<split>.json, one row per file in
    RUN_DIR/predictions_<split>.csv. With ``--on``, on every file of another dataset instead
    (metrics_on-<name>.json). A summary folder (``--seeds``/``--folds``): every run scored, and
    the summary table (summary_<split>.json, summary_on-<name>.json)."""
    import json
    from pathlib import Path

    from . import repeats
    from .evaluate import evaluate_on, evaluate_run, metrics_table
    from .tasks import TASKS

    name = f"on-{Path(on).stem}" if on else split
    if repeats.is_summary(run_dir):
        summary = repeats.evaluate_summary(run_dir, split, on)
        if as_json:
            click.echo(json.dumps(summary, indent=1))
        click.echo(repeats.format_table(summary, repeats.headline_of(summary)))
        click.echo(f"summary: {Path(run_dir) / f'summary_{name}.json'}")
        return
    metrics = evaluate_on(run_dir, on) if on else evaluate_run(run_dir, split)
    if as_json:
        click.echo(json.dumps(metrics, indent=1))
        return
    task = TASKS[repeats.task_of(run_dir)]
    click.echo(metrics_table(metrics, task(None)))
    click.echo(f"every metric: {Path(run_dir) / f'metrics_{name}.json'}; a row per file: "
               f"{Path(run_dir) / f'predictions_{name}.csv'}")  # fmt: skip


@main.command("predict")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("audio", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="folder for piano rolls / embeddings (default RUN_DIR/predictions)",
)
def predict_cmd(run_dir: str, audio: tuple[str, ...], out: str | None) -> None:
    """Per-file results on audio files, the feature computed with the run's saved parameters."""
    import json

    from .predict import predict_audio

    results = predict_audio(run_dir, list(audio), out)
    failed = [r for r in results if "error" in r]
    for r in results:
        if "error" in r:
            click.echo(f"error: {r['error']}", err=True)
        else:
            r.pop("output")
            click.echo(json.dumps(r))
    if failed:
        click.echo(f"{len(failed)} of {len(results)} file(s) could not be read", err=True)
        sys.exit(2)
