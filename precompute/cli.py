"""``precompute``: make demo data, import annotations, compute and inspect feature stores."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common.config import ConfigError
from common.pyjama import PyjamaError, write_pyjama


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Precompute audio features and targets into HDF5 stores reused across experiments."""


@main.command("demo-data")
@click.option(
    "--out", "out", default="data/demo", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--per-class", default=10, show_default=True, help="tunes per dance type (each in 3 versions)"
)
@click.option("--clip-s", default=8.0, show_default=True, help="seconds per clip")
def demo_data(out: str, per_class: int, clip_s: float) -> None:
    """Render the offline demo dataset (music21 corpus) into OUT/audio and OUT/demo.pyjama."""
    from .demo import make_demo

    path = make_demo(out, per_class=per_class, clip_s=clip_s)
    click.echo(path)


@main.group("import")
def import_() -> None:
    """Write a .pyjama from a folder-per-class tree or from .lab/.csv segment files."""


@import_.command("folder")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--key", required=True, help="description name of the label, e.g. genre")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="the .pyjama to write"
)
def import_folder_cmd(root: str, key: str, out: str) -> None:
    """ROOT/<label>/*.wav (GTZAN-style) -> a global text description KEY."""
    from .importers import ImportError_, import_folder

    try:
        coll = import_folder(root, key, Path(out).parent)
    except ImportError_ as e:
        raise click.ClickException(str(e)) from None
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
    from .importers import ImportError_, import_lab

    try:
        coll = import_lab(audio_root, key, Path(out).parent, labels_dir, columns)
    except ImportError_ as e:
        raise click.ClickException(str(e)) from None
    write_pyjama(coll, out)
    for m in coll.skipped:
        click.echo(f"warning: {m}: no .lab or .csv found, left out", err=True)
    click.echo(f"{len(coll.entries)} entries -> {out}")


@main.command("validate")
@click.argument("pyjama", type=click.Path(dir_okay=False))
@click.option(
    "--audio-root", type=click.Path(file_okay=False), help="folder for relative or bare filepaths"
)
def validate_cmd(pyjama: str, audio_root: str | None) -> None:
    """Check a .pyjama and list every problem (exit 1 if any)."""
    from common.pyjama import read_pyjama

    try:
        coll = read_pyjama(pyjama, audio_root=audio_root, on_error="skip")
    except PyjamaError as e:
        raise click.ClickException(str(e)) from None
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


def run_cli() -> None:
    try:
        main(standalone_mode=True)
    except (ConfigError, PyjamaError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
