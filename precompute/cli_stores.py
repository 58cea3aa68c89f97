"""The commands on stores folders: ``ls``, ``gc``, ``migrate``, ``info``, ``verify``, ``show``,
``push`` and ``pull``; a folder or, where it says so, a URL of object storage (:mod:`.remote`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common.cli import fail as _fail
from common.errors import StoreError
from common.remote import RemoteError, is_url


@click.command("ls")
@click.argument("stores", default="stores")
def ls_cmd(stores: str) -> None:
    """List the stores of STORES (a folder or a URL): dataset, feature, files, hours, the view's
    size and its features' (in the pool, shared with other views of the same audio), created,
    last used (a URL: uploaded)."""
    from .manage import list_stores
    from .remote import list_remote

    try:
        lines = list_remote(stores) if is_url(stores) else list_stores(stores)
    except RemoteError as e:
        _fail(f"error: {e}", 2)
    for line in lines:
        click.echo(line)


@click.command("gc")
@click.argument("stores", default="stores")
@click.option(
    "--older-than",
    "days",
    type=float,
    help="remove stores unused for DAYS days (on a URL: uploaded DAYS days ago)",
)
@click.option(
    "--compact", is_flag=True, help="rewrite segments less than half used, re-pointing the stores"
)
@click.option(
    "--grace",
    "grace_hours",
    type=float,
    help="keep a segment no store needs for this many hours after it became unneeded "
    "(default 0; on a URL, after it was uploaded, default 1: a push uploads segments first)",
)
@click.option("--dry-run", is_flag=True, help="only say what would be removed")
def gc_cmd(
    stores: str, days: float | None, compact: bool, grace_hours: float, dry_run: bool
) -> None:
    """Remove stores not used for DAYS days, then the segments no store needs, and abandoned
    builds; with --compact, rewrite mostly dead segments. Files a process reads are kept."""
    from .compact import compact as compact_pool
    from .manage import collect_garbage

    if days is None and not compact:
        raise click.UsageError("give --older-than DAYS, --compact, or both")
    if is_url(stores):  # an object store: by upload time; segments kept at least an hour
        from .remote import gc_remote

        if compact:
            _fail(f"error: {stores}: --compact writes new segments and re-points views on a "
                  "local folder: pull, compact, push", 2)  # fmt: skip
        try:
            grace = 1.0 if grace_hours is None else grace_hours
            freed = gc_remote(stores, days, grace, dry_run, log=click.echo)
        except RemoteError as e:
            _fail(f"error: {e}", 2)
        click.echo(f"{'would free' if dry_run else 'freed'} {freed / 2**20:.1f} MB")
        return
    freed, grace_hours = 0, grace_hours or 0.0
    if days is not None:
        freed += collect_garbage(stores, days, dry_run, grace_hours, log=click.echo)
    if compact:
        freed += compact_pool(stores, dry_run, grace_hours, log=click.echo)
    click.echo(f"{'would free' if dry_run else 'freed'} {freed / 2**20:.1f} MB")


@click.command("migrate")
@click.argument("stores", default="stores", type=click.Path(file_okay=False))
def migrate_cmd(stores: str) -> None:
    """Move the features of format-2 stores into the pool (nothing is recomputed); each store
    becomes a view under the same name."""
    from .migrate import migrate

    views = migrate(stores, log=click.echo)
    click.echo(f"{len(views)} store(s) migrated")


@click.command("info")
@click.argument("store")
def info_cmd(store: str) -> None:
    """Files, frames, patches, shape, parameters, targets and size of STORE, a path or a URL
    (JSON)."""
    import json

    from .inspect import info
    from .remote import remote_info

    if not is_url(store) and not Path(store).is_file():
        _fail(f"error: {store}: no such store", 2)
    try:
        out = remote_info(store) if is_url(store) else info(store)
    except (RemoteError, StoreError) as e:
        _fail(f"error: {e}", 2)
    click.echo(json.dumps(out, indent=1))


@click.command("verify")
@click.argument("store")
def verify_cmd(store: str) -> None:
    """Check a store (or every store and segment of a stores folder), a path or a URL: tables,
    parameters, and every file's rows against their checksum (from a URL, fetched by ranged
    GETs); exit 1 on any fault, each named by its file."""
    from .inspect import verified, verify
    from .remote import verify_remote

    if is_url(store):
        try:
            faults, what = verify_remote(store)
        except RemoteError as e:
            _fail(f"error: {e}", 2)
        for f in faults:
            click.echo(f, err=True)
        click.echo(f"ok: {what}" if not faults else f"{len(faults)} fault(s)")
        sys.exit(1 if faults else 0)
    if not Path(store).exists():
        _fail(f"error: {store}: no such store or stores folder", 2)
    faults = verify(store)
    for f in faults:
        click.echo(f"{store}: {f}", err=True)
    click.echo(f"ok: {verified(store)}" if not faults else f"{len(faults)} fault(s)")
    sys.exit(1 if faults else 0)


@click.command("show")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--file", "name", required=True, help="filepath, file name or stem of the file to draw"
)
@click.option("-o", "--out", default="show.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--channel", type=int, help="channel (harmonic) to draw; default: harmonic 1")
def show_cmd(store: str, name: str, out: str, channel: int | None) -> None:
    """Draw a file's feature with its patch grid and frame-level targets over it."""
    from .inspect import show

    click.echo(show(store, name, out, channel))


@click.command("push")
@click.argument("stores", type=click.Path(exists=True, file_okay=False))
@click.argument("url")
@click.option("--store", "views", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="a view of STORES to push (default: every one)")  # fmt: skip
def push_cmd(stores: str, url: str, views: tuple[str, ...]) -> None:
    """Upload the stores of STORES (or each --store) to the stores folder at URL
    (s3://bucket/prefix): each view after exactly the segments it needs that URL lacks, its
    files' frames checked against their checksums first. Prints each view's URL."""
    from .remote import push

    try:
        pushed = push(
            stores, url, [Path(v) for v in views] or None, log=lambda m: click.echo(m, err=True)
        )
    except (RemoteError, StoreError) as e:
        _fail(f"error: {e}", 2)
    for u in pushed:
        click.echo(u)


@click.command("pull")
@click.argument("url")
@click.argument("stores", default="stores", type=click.Path(file_okay=False))
def pull_cmd(url: str, stores: str) -> None:
    """Download the store at URL (a view's URL, or every store of a stores folder's URL) into
    STORES with the segments it needs, checked against their checksums. Prints each path."""
    from .remote import pull

    try:
        got = pull(url, stores, log=lambda m: click.echo(m, err=True))
    except (RemoteError, StoreError) as e:
        _fail(f"error: {e}", 2)
    for p in got:
        click.echo(str(p))
