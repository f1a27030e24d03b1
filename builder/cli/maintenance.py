"""Store maintenance commands: `gc`, `prune` (build cache, like `docker builder
prune`), `fsck` (non-zero exit naming every problem) and `du`."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.cli.images import open_store
from lamina.builder.cli.units import human_size, parse_duration, parse_size, table
from lamina.store.errors import StoreError


def _gc_lines(report) -> list[str]:
    return [f"Removed {report.blobs_removed} blob(s), {report.layers_removed} layer(s) "
            f"({report.dirs_removed} extracted dir(s)), {report.cache_entries_removed} cache entr"
            f"{'y' if report.cache_entries_removed == 1 else 'ies'}, {report.leases_expired} expired lease(s)",
            f"Total reclaimed space: {human_size(report.bytes_removed)}"]


@cli.command("gc")
@click.option("--cache-max-age", metavar="DUR", default=None,
              help="Also drop build cache entries not used for DUR (e.g. 24h, 7d).")
@click.option("--cache-max-size", metavar="SIZE", default=None,
              help="Also drop least recently used build cache until it holds at most SIZE (e.g. 10GB).")
@click.pass_obj
def gc_cmd(g: Globals, cache_max_age: str | None, cache_max_size: str | None) -> None:
    """Remove blobs, layers and extracted dirs that no image, cache entry or running
    build uses."""
    age = parse_duration(cache_max_age) if cache_max_age else None
    size = parse_size(cache_max_size) if cache_max_size else None
    with open_store(g) as store:
        report = store.gc(cache_max_age=age, cache_max_bytes=size)
    for line in _gc_lines(report):
        click.echo(line)


@cli.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Accepted for docker compatibility (all cache "
              "entries not held by a running build are removed anyway).")
@click.option("-f", "--force", is_flag=True, help="Do not prompt (lamina never prompts).")
@click.option("--filter", "filters", multiple=True, metavar="until=DUR",
              help="Only entries not used for DUR (e.g. until=24h).")
@click.option("--keep-storage", metavar="SIZE", default=None,
              help="Keep the most recently used cache up to SIZE.")
@click.pass_obj
def prune_cmd(g: Globals, all_: bool, force: bool, filters: tuple[str, ...], keep_storage: str | None) -> None:
    """Remove build cache entries (and what only they held)."""
    age = timedelta(0)
    for f in filters:
        key, eq, value = f.partition("=")
        if key != "until" or not eq:
            raise StoreError(f"unsupported filter {f!r} (supported: until=DUR)")
        age = parse_duration(value)
    size = parse_size(keep_storage) if keep_storage else None
    with open_store(g) as store:
        if size is not None and not filters:
            report = store.gc(cache_max_bytes=size)
        else:
            report = store.gc(cache_max_age=age, cache_max_bytes=size)
    for line in _gc_lines(report):
        click.echo(line)


@cli.command("fsck")
@click.option("--quick", is_flag=True, help="Only re-hash blobs and check references (skip decompressing "
              "layers and verifying extracted layer dirs): for big stores.")
@click.option("--repair", is_flag=True, help="Tighten store directories other users could enter; remove damaged or missing extracted layer dirs (re-extracted "
              "from their blob on next use).")
@click.option("--deep", is_flag=True, hidden=True, help="The default (kept for compatibility).")
@click.pass_obj
def fsck_cmd(g: Globals, quick: bool, repair: bool, deep: bool) -> None:
    """Check the store: re-hash every blob, check every reference, decompress every
    layer to its diff_id and compare every extracted layer dir with its layer; exit 1
    naming each problem."""
    if quick and deep:
        raise StoreError("--quick and --deep contradict each other")
    with open_store(g) as store:
        rep = store.fsck(quick=quick, repair=repair)
    for p in rep.problems:
        click.echo(f"ERROR: {p}")
    for n in rep.notes:
        click.echo(f"note: {n}")
    for d in rep.repaired:
        click.echo(f"repaired: layer {d.diff_id}: removed its extracted directory {g.root / 'layers' / d.dir} "
                   f"(re-extracted from its blob on next use)")
    for m in rep.tightened:
        click.echo(f"repaired: {m.path}: mode {m.mode:04o} -> {(m.mode & 0o700) | 0o700:04o}")
    for n in rep.not_repaired:
        click.echo(f"not repaired: {n}")
    what = (f"checked {rep.blobs_checked} blobs, {rep.images_checked} images, {rep.layers_checked} layers"
            + (" (quick: layer contents not checked)" if rep.quick
               else f", {rep.layer_dirs_verified} layer dirs")
            + (f"; {rep.remote_blobs} layer blob(s) not fetched yet (fetched when read)"
               if rep.remote_blobs else ""))
    left = rep.unresolved
    if rep.ok:
        status = "ok"
    elif repair:
        status = f"{len(rep.problems)} problem(s), {len(rep.problems) - len(left)} repaired"
    else:
        status = f"{len(rep.problems)} problem(s)"
    click.echo(f"{what}: {status}")
    if left:
        hint = ("" if repair or not (rep.damaged_dirs or rep.loose_modes)
                else "; `lamina fsck --repair` removes damaged layer dirs and tightens loose modes")
        raise StoreError(f"the store at {g.root} is damaged: {len(left)} problem(s), listed above{hint}")


@cli.command("du")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: every number, in bytes.")
@click.pass_obj
def du_cmd(g: Globals, fmt: str) -> None:
    """Show what the images would take stored apart (logical), what the store holds
    (each shared layer once), what sharing and file dedup save, and the disk use."""
    with open_store(g) as store:
        r = store.du()
    if fmt == "json":
        click.echo(json.dumps(r.as_dict(), indent=2, sort_keys=True))
        return
    layers = [
        ["logical (each image counted apart)", human_size(r.logical_blob_bytes), human_size(r.logical_bytes)],
        ["stored (each layer once)", human_size(r.image_blob_bytes), human_size(r.image_layer_bytes)],
        ["saved by sharing layers", human_size(r.sharing_saved_blob_bytes), human_size(r.sharing_saved_bytes)],
    ]
    if r.dedup_saved_bytes:
        layers.append(["saved by file dedup (hard links)", "", human_size(r.dedup_saved_bytes)])
    click.echo(table(["IMAGE LAYERS", "COMPRESSED", "EXTRACTED"], layers))
    disk = [
        ["blobs", str(r.blob_count), human_size(r.blob_bytes)],
        ["layer dirs", str(r.layer_dirs), human_size(r.stored_bytes)],
        ["database", "", human_size(r.db_bytes)],
        ["total", "", human_size(r.total_bytes)],
    ]
    click.echo()
    click.echo(table(["DISK USE", "COUNT", "SIZE"], disk))
    click.echo()
    notes = [f"{r.images} image(s), {r.layers} layer(s) ({r.shared_layers} shared by several images), "
             f"{r.cache_entries} cache entr{'y' if r.cache_entries == 1 else 'ies'}"]
    if r.unextracted_layers:
        notes.append(f"{r.unextracted_layers} image layer(s) not extracted (0 in EXTRACTED)")
    click.echo("; ".join(notes))
