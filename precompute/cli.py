"""``precompute``: make demo data, import annotations, compute and inspect feature stores."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common.cli import Group, command_line, debugging, fail
from common.config import ConfigError
from common.errors import StoreError
from common.pyjama import PyjamaError, write_pyjama
from common.remote import RemoteError, is_url

from .cli_stores import (
    gc_cmd,
    info_cmd,
    ls_cmd,
    migrate_cmd,
    pull_cmd,
    push_cmd,
    show_cmd,
    verify_cmd,
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Precompute audio features and targets into HDF5 stores reused across experiments."""


@main.command("demo-data")
@click.option(
    "--out", "out", default="data/demo", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--per-class", default=13, show_default=True, help="tunes per dance type (each in 3 versions)"
)
@click.option("--clip-s", default=7.5, show_default=True, help="seconds per clip")
@click.option(
    "--cover",
    is_flag=True,
    help="the cover demo instead: WORKS folk tunes in VERSIONS arrangements each "
    "(key, tempo, instruments, harmony, structure, recording) into OUT/covers.pyjama",
)
@click.option("--works", default=200, show_default=True, help="with --cover: works")
@click.option("--versions", default=5, show_default=True, help="with --cover: versions per work")
@click.option(
    "--after",
    default=0,
    show_default=True,
    help="with --cover: skip the first AFTER works (the large set: --after 200, none of the "
    "cover demo's works)",
)
@click.option("--jobs", default=2, show_default=True, help="with --cover: parallel jobs")
def demo_data(
    out: str,
    per_class: int,
    clip_s: float,
    cover: bool,
    works: int,
    versions: int,
    after: int,
    jobs: int,
) -> None:
    """Render the offline demo dataset (music21 corpus) into OUT/audio and OUT/demo.pyjama,
    or with --cover the cover demo into OUT/audio and OUT/covers.pyjama (same bytes on every
    run)."""
    if cover:
        from .cover_demo import make_cover_demo

        try:
            path = make_cover_demo(out, works=works, versions=versions, jobs=jobs, after=after)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    else:
        from .demo import make_demo

        path = make_demo(out, per_class=per_class, clip_s=clip_s)
    click.echo(path)


@main.group("import")
def import_() -> None:
    """Write a .pyjama from a folder-per-class tree, .lab/.csv segment files, JAMS files, or a
    mirdata dataset."""


@import_.command("folder")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--key", required=True, help="description name of the label, e.g. genre")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="the .pyjama to write"
)
@click.option(
    "--group-by",
    help="record a 'group' per file, kept in one split and fold: 'stem' (files of one name in "
    "several folders) or a regular expression on the path under ROOT (its first group)",
)
def import_folder_cmd(root: str, key: str, out: str, group_by: str | None) -> None:
    """ROOT/<label>/*.wav (GTZAN-style) -> a global text description KEY."""
    from .importers import import_folder

    coll = import_folder(root, key, Path(out).parent, group_by)
    write_pyjama(coll, out)
    click.echo(
        f"{len(coll.entries)} entries, {len(coll.definitions[key].dictionary)} labels -> {out}"
    )


@import_.command("lab")
@click.argument("audio_root", type=click.Path(exists=True, file_okay=False))
@click.option("--key", required=True, help="description name of the segments, e.g. chord")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="the .pyjama to write"
)
@click.option(
    "--labels-dir",
    type=click.Path(exists=True, file_okay=False),
    help="where the .lab/.csv are (default: beside the audio)",
)
@click.option(
    "--columns",
    type=click.Choice(["start-end", "start-duration"]),
    default="start-end",
    show_default=True,
)
def import_lab_cmd(
    audio_root: str, key: str, out: str, labels_dir: str | None, columns: str
) -> None:
    """AUDIO_ROOT/**/x.wav with x.lab or x.csv (start end label) -> a segment description KEY."""
    from .importers import import_lab

    coll = import_lab(audio_root, key, Path(out).parent, labels_dir, columns)
    write_pyjama(coll, out)
    for m in coll.skipped:
        click.echo(f"warning: {m}: no .lab or .csv found, left out", err=True)
    click.echo(f"{len(coll.entries)} entries -> {out}")


@import_.command("jams")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="the .pyjama to write"
)
@click.option(
    "--audio-root",
    type=click.Path(exists=True, file_okay=False),
    help="where the audio is (default: FOLDER); paired with each .jams by stem",
)
def import_jams_cmd(folder: str, out: str, audio_root: str | None) -> None:
    """FOLDER/**/*.jams (JAMS, as GuitarSet and mirdata ship them) -> a .pyjama.

    Exit status 1 when some files could not be imported (each is named, the rest are)."""
    from .jams_import import import_jams

    result = import_jams(folder, Path(out).parent, audio_root)
    _write_import(result, out)


@import_.command("mirdata")
@click.argument("name")
@click.option(
    "--data-home", required=True, type=click.Path(exists=True, file_okay=False),
    help="where the dataset is (mirdata's data_home)",
)  # fmt: skip
@click.option(
    "--version", "version", help="the dataset's version (mirdata's; default: its default)"
)
@click.option(
    "--index", type=click.Path(exists=True, dir_okay=False),
    help="the dataset's mirdata index JSON (mirdata downloads it otherwise)",
)  # fmt: skip
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False), help="the .pyjama to write (default: DATA_HOME/NAME.pyjama)"
)  # fmt: skip
def import_mirdata_cmd(
    name: str, data_home: str, version: str | None, index: str | None, out: str | None
) -> None:
    """A dataset mirdata loads (gtzan_genre, medleydb_pitch, guitarset, ...) -> a .pyjama.

    Exit status 1 when some tracks could not be imported (each is named, the rest are)."""
    from .mirdata_import import import_mirdata

    out = out or str(Path(data_home) / f"{name}.pyjama")
    result = import_mirdata(name, data_home, Path(out).parent, version, index)
    _write_import(result, out)


def _write_import(result, out: str) -> None:
    """An importer's errors, its pyjama (written whole, or not at all), one summary line; exit
    status 1 when some sources were left out."""
    for e in result.errors:
        click.echo(f"error: {e}", err=True)
    if result.collection.entries:
        write_pyjama(result.collection, out)
    click.echo(f"{result.summary()} -> {out if result.collection.entries else 'nothing written'}")
    sys.exit(1 if result.errors else 0)


@main.command("validate")
@click.argument("pyjama", type=click.Path(dir_okay=False))
@click.option(
    "--audio-root", type=click.Path(file_okay=False), help="folder for relative or bare filepaths"
)
def validate_cmd(pyjama: str, audio_root: str | None) -> None:
    """Check a .pyjama and list every problem (exit 1 if any)."""
    from common.pyjama import read_pyjama

    coll = read_pyjama(pyjama, audio_root=audio_root, on_error="skip")
    for p in coll.problems:
        click.echo(str(p), err=True)
    missing = [e for e in coll.entries if not e.audio_path.is_file()]
    for e in missing:
        click.echo(
            f"{Path(pyjama).name}: entry {e.index} ({e.filepath}): audio not found at {e.audio_path}",
            err=True,
        )
    click.echo(
        f"{len(coll.entries)} entries valid, {len(coll.skipped)} with problems, {len(missing)} without audio; "
        f"descriptions: {', '.join(coll.description_names())}"
    )
    sys.exit(1 if coll.problems or missing else 0)


@main.command("run")
@click.option("--dataset", required=True, type=click.Path(dir_okay=False), help="the .pyjama file")
@click.option(
    "--feature",
    required=True,
    help="waveform | lms | cqt | hcqt (configs/features/NAME.yaml) or a YAML path",
)
@click.option(
    "--audio-root", type=click.Path(file_okay=False), help="folder for relative or bare filepaths"
)
@click.option(
    "--stores",
    default="stores",
    show_default=True,
    help="a folder, or a URL (s3://bucket/prefix): built in a local stage, then pushed",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="with a URL: the local cache and stage (default MIRPATCH_CACHE_DIR, ~/.cache/mirpatch)",
)
@click.option("--jobs", "-j", default=1, show_default=True, help="parallel tasks (-1: all cores)")
@click.option(
    "--backend",
    default="loky",
    show_default=True,
    type=click.Choice(["loky", "multiprocessing", "threading", "sequential", "dask", "ray"]),
    help="joblib backend; dask / ray run the tasks on a cluster",
)
@click.option(
    "--scheduler",
    "--address",
    "scheduler",
    help="dask scheduler (tcp://host:8786) or ray address; without it, dask starts a LocalCluster of --jobs workers",
)
@click.option("--strict", is_flag=True, help="stop at the first bad entry or file")
@click.option("--wait", is_flag=True, help="if another process builds the same store, wait for it")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a feature parameter"
)
@click.option(
    "--pitch-unit",
    "pitch_units",
    multiple=True,
    metavar="NAME=hz|midi",
    help="the unit of a pitch description's values (default: from its definition, name or values)",
)
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def run_cmd(
    dataset,
    feature,
    audio_root,
    stores,
    cache_dir,
    jobs,
    backend,
    scheduler,
    strict,
    wait,
    overrides,
    pitch_units,
    quiet,
) -> None:
    """Compute one feature store; prints a summary, then the store path as the last line.

    Features of audio already computed with the same values, by any run into STORES, are
    reused from its feature pool, neither computed nor copied again; after an interruption a
    rerun continues where it stopped.

    Exit status: 0 all files computed; 1 the store was written but some entries or files
    were bad (each is listed); 2 nothing was written (bad pyjama, config, or --strict stop);
    3 another process is building the same store; 4 the disk is full (a rerun continues);
    130 interrupted (Ctrl-C): the files finished are kept, the same command continues.
    """
    from common.config import parse_override
    from common.features import make_feature
    from common.store import DiskFullError

    from .backends import BackendError
    from .pipeline import LockedError, PlanError, StrictStop, execute, find_built, make_plan

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    url = stores if is_url(stores) else None
    try:
        feat = make_feature(feature, {k[0]: v for k, v in map(parse_override, overrides)})
        units = dict(_pitch_unit(u) for u in pitch_units)
        if url is not None:  # built in a local stage, then pushed
            stores = _stage(dataset, feat, url, cache_dir, units)
        built = None if units else find_built(dataset, feat, stores, audio_root)
        if built is not None:  # a no-op: found without reading the pyjama
            _report(built, url)
            sys.exit(0)
        plan = make_plan(dataset, feat, stores, audio_root, strict, pitch_units=units)
        for p in plan.collection.problems:
            click.echo(f"skipped: {p}", err=True)
        for note in plan.notes:
            click.echo(f"note: {note}", err=True)
        for f in plan.failed:
            click.echo(f"error: {f['reason']}", err=True)
        _note_old_stores(plan.stores)
        summary = execute(
            plan,
            jobs=jobs,
            backend=backend,
            strict=strict,
            progress=not quiet,
            log=log,
            scheduler=scheduler,
            wait=wait,
        )
    except (ConfigError, PyjamaError, BackendError, RemoteError) as e:
        _fail(f"error: {e}", 2)
    except (StrictStop, PlanError) as e:
        _fail(f"stopped (--strict): {e}; finished files are kept, a rerun continues", 2)
    except LockedError as e:
        _fail(f"error: {e}", 3)
    except DiskFullError as e:
        _fail(f"error: {e}", 4)
    except KeyboardInterrupt:
        _interrupted(stores)
    _report(summary, url)
    sys.exit(0 if summary.ok else 1)


def _stage(dataset: str, feat, url: str, cache_dir: str | None, units: dict) -> str:
    """The local stores folder a build for ``url`` is made in; exit 0 naming the store when
    the bucket has it already."""
    from .remote import find_remote, stage_of

    found = None if units else find_remote(dataset, feat, url, cache_dir)
    if found:
        click.echo(f"exists: {found}", err=True)
        click.echo(found)
        sys.exit(0)
    return str(stage_of(url, cache_dir))


def _interrupted(stores: str) -> None:
    """Ctrl-C: what is kept, and the command that continues (exit 130)."""
    from .layout import size_text

    if debugging():
        raise KeyboardInterrupt
    click.echo(f"interrupted: the files finished are kept; continue with: "
               f"{command_line(click.get_current_context())}", err=True)  # fmt: skip
    for p in sorted(Path(stores).glob("pool/*/*.partial")):
        click.echo(f"the unfinished segment {p} ({size_text(p.stat().st_size)}) stays for that "
                   f"run; if it is abandoned, `precompute gc {stores} --older-than DAYS` removes "
                   "it once DAYS days old", err=True)  # fmt: skip
    sys.exit(130)


def _report(summary, url: str | None = None) -> None:
    """What a build did, its warnings and failures, and the store's path as the last line
    (with ``url``: the view pushed there, and its URL)."""
    for w in summary.warnings:
        click.echo(f"warning: {w}", err=True)
    for p in summary.changed:
        click.echo(f"audio changed since it was last computed: {p} (computed again)", err=True)
    if summary.existed:
        click.echo(
            f"store exists: {summary.files} files, {summary.audio_s / 3600:.2f} h of audio"
            + (f", {len(summary.failed)} failed at build" if summary.failed else "")
        )
        for f in summary.failed:
            click.echo(f"failed: {f['reason']}", err=True)
    else:
        click.echo(
            f"{summary.files} files done, {len(summary.failed)} failed, {len(summary.skipped)} skipped; "
            f"{summary.computed} computed, {summary.reused} reused from the pool"
            + (f", {summary.resumed} from the interrupted run" if summary.resumed else "")
            + (f", {summary.repaired} whose rows had been deleted" if summary.repaired else "")
            + f"; {summary.audio_s / 3600:.3f} h of audio in {summary.seconds:.1f} s"
        )
    if url is None:
        click.echo(str(summary.store_path))
        return
    from .remote import push

    stage = Path(summary.store_path).parent.parent
    try:
        (pushed,) = push(
            stage, url, [Path(summary.store_path)], log=lambda m: click.echo(m, err=True)
        )
    except (RemoteError, StoreError) as e:
        _fail(f"error: {e}; the store is built in {stage}, the same command pushes it", 2)
    click.echo(pushed)


def _note_old_stores(stores: Path) -> None:
    from .migrate import format2_stores

    old = format2_stores(stores)
    if old:
        click.echo(
            f"note: {len(old)} store(s) of format 2 in {stores}: their features are reused once "
            f"moved into the pool with: precompute migrate {stores}",
            err=True,
        )


def _pitch_unit(text: str) -> tuple[str, str]:
    from common.targets import PITCH_UNITS

    name, _, unit = text.partition("=")
    if not name or unit.lower() not in PITCH_UNITS:
        raise click.BadParameter(
            f"{text!r}: expected NAME=hz or NAME=midi", param_hint="--pitch-unit"
        )
    return name, unit.lower()


_fail = fail


for _cmd in (ls_cmd, gc_cmd, migrate_cmd, info_cmd, verify_cmd, show_cmd, push_cmd, pull_cmd):
    main.add_command(_cmd)
