"""Image commands that need only the store: `import`, `images`, `inspect`,
`history`, `tag`, `rmi`. Output follows docker's (columns, sizes, JSON shape)."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.cli.units import human_size, since, table
from lamina.store import oci, refs
from lamina.store.errors import ImageNotFound, StoreError
from lamina.store.store import Store


def open_store(g: Globals) -> Store:
    return Store(g.root)


def _created(s: str | None) -> datetime | None:
    return oci.parse_time(s) if s else None


# -- import ------------------------------------------------------------------------

_CHANGE_KEYS = {"CMD": "Cmd", "ENTRYPOINT": "Entrypoint", "ENV": "Env", "EXPOSE": "ExposedPorts",
                "LABEL": "Labels", "USER": "User", "VOLUME": "Volumes", "WORKDIR": "WorkingDir",
                "STOPSIGNAL": "StopSignal", "ONBUILD": "OnBuild"}


def apply_change(config: dict[str, Any], change: str) -> None:
    """One `--change` Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    USER, VOLUME, WORKDIR, STOPSIGNAL, ONBUILD) applied to a container config."""
    word, _, rest = change.strip().partition(" ")
    kw = word.upper()
    rest = rest.strip()
    if kw not in _CHANGE_KEYS or (not rest and kw != "CMD"):
        raise StoreError(f"invalid --change {change!r}: expected one of "
                         f"{', '.join(sorted(_CHANGE_KEYS))} with an argument")

    def json_or_shell(arg: str) -> list[str]:
        if arg.startswith("["):
            try:
                v = json.loads(arg)
            except json.JSONDecodeError:
                v = None
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return v
        return ["/bin/sh", "-c", arg]

    def pairs(arg: str) -> list[tuple[str, str]]:
        try:
            words = shlex.split(arg)
        except ValueError as e:
            raise StoreError(f"invalid --change {change!r}: {e}") from None
        if words and "=" not in words[0]:  # legacy `ENV key value`
            k, _, v = arg.partition(" ")
            return [(k, v.strip())]
        out = []
        for w in words:
            k, eq, v = w.partition("=")
            if not eq or not k:
                raise StoreError(f"invalid --change {change!r}: expected KEY=VALUE, got {w!r}")
            out.append((k, v))
        return out

    if kw in ("CMD", "ENTRYPOINT"):
        config[_CHANGE_KEYS[kw]] = json_or_shell(rest)
    elif kw == "ENV":
        env = [e for e in config.get("Env", [])]
        for k, v in pairs(rest):
            env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
        config["Env"] = env
    elif kw == "LABEL":
        labels = dict(config.get("Labels", {}))
        labels.update(pairs(rest))
        config["Labels"] = labels
    elif kw == "EXPOSE":
        ports = dict(config.get("ExposedPorts", {}))
        for p in rest.split():
            ports[p if "/" in p else f"{p}/tcp"] = {}
        config["ExposedPorts"] = ports
    elif kw == "VOLUME":
        vols = dict(config.get("Volumes", {}))
        paths = json_or_shell(rest) if rest.startswith("[") else rest.split()
        if paths[:2] == ["/bin/sh", "-c"]:
            paths = rest.split()
        for p in paths:
            vols[p] = {}
        config["Volumes"] = vols
    elif kw == "ONBUILD":
        config["OnBuild"] = list(config.get("OnBuild", [])) + [rest]
    else:
        config[_CHANGE_KEYS[kw]] = rest


@cli.command("import")
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, "
                   "VOLUME, WORKDIR, STOPSIGNAL, ONBUILD) to the image config.")
@click.option("-m", "--message", default=None, help="Commit message (history comment).")
@click.argument("tarball", metavar="TARBALL")
@click.argument("ref", metavar="[REPOSITORY[:TAG]]", required=False)
@click.pass_obj
def import_(g: Globals, changes, message, tarball: str, ref: str | None) -> None:
    """Import a root filesystem tarball (plain, gzip, zstd, xz, bzip2; `-` for stdin)
    as a one-layer image; prints the image ID."""
    container_config: dict[str, Any] = {}
    for ch in changes:
        apply_change(container_config, ch)
    if ref:
        refs.parse_tag(ref)  # fail before reading anything
    with open_store(g) as store:
        if tarball == "-":
            tmp = store.temp_path("stdin")
            try:
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
                img = store.import_rootfs(tmp, ref, changes=container_config,
                                          message=message or "Imported from -")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            path = Path(tarball)
            if not path.is_file():
                raise StoreError(f"cannot import {tarball}: no such file", path=tarball)
            img = store.import_rootfs(path, ref, changes=container_config, message=message)
    click.echo(img.id)


# -- images ------------------------------------------------------------------------

@cli.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate image IDs.")
@click.option("--digests", is_flag=True, help="Show manifest digests.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="table (default), or json: one object per line, as docker's --format json.")
@click.argument("repository", required=False, metavar="[REPOSITORY[:TAG]]")
@click.pass_obj
def images_cmd(g: Globals, quiet: bool, no_trunc: bool, digests: bool, fmt: str, repository: str | None) -> None:
    """List images: one row per tag (untagged images as <none>)."""
    want_name = want_tag = None
    if repository:
        r = refs.parse(repository, default_tag=False)
        want_name, want_tag = r.name, r.tag
    with open_store(g) as store:
        summaries = store.images()
    now = datetime.now(timezone.utc)
    rows = []
    epoch = datetime.fromtimestamp(0, timezone.utc)
    for s in sorted(summaries, key=lambda s: (_created(s.created) or epoch, s.added), reverse=True):
        names = [refs.parse(t, default_tag=False) for t in s.tags] or [None]
        for r in names:
            if want_name is not None:
                if r is None or r.name != want_name or (want_tag is not None and r.tag != want_tag):
                    continue
            rows.append((s, r))
    if quiet:
        seen = []
        for s, _ in rows:
            ident = s.config_digest if no_trunc else s.config_digest.split(":", 1)[1][:12]
            if ident not in seen:
                seen.append(ident)
        for ident in seen:
            click.echo(ident)
        return
    if fmt == "json":
        for s, r in rows:
            created = _created(s.created)
            click.echo(json.dumps({
                "Containers": "N/A",
                "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC") if created else "",
                "CreatedSince": since(created, now),
                "Digest": s.manifest_digest,
                "ID": s.config_digest if no_trunc else s.config_digest.split(":", 1)[1][:12],
                "Repository": r.familiar_name if r else "<none>",
                "SharedSize": "N/A",
                "Size": human_size(s.size),
                "Tag": (r.tag or "<none>") if r else "<none>",
                "UniqueSize": "N/A",
                "VirtualSize": human_size(s.size),
            }, separators=(",", ":")))
        return
    header = ["REPOSITORY", "TAG"] + (["DIGEST"] if digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    out = []
    for s, r in rows:
        line = [r.familiar_name if r else "<none>", (r.tag or "<none>") if r else "<none>"]
        if digests:
            line.append(s.manifest_digest)
        line += [s.config_digest if no_trunc else s.config_digest.split(":", 1)[1][:12],
                 since(_created(s.created), now), human_size(s.size)]
        out.append(line)
    click.echo(table(header, out))


# -- inspect -----------------------------------------------------------------------

@cli.command("inspect")
@click.argument("refs_", nargs=-1, required=True, metavar="REF...")
@click.pass_obj
def inspect_cmd(g: Globals, refs_: tuple[str, ...]) -> None:
    """Show image details as JSON (a list, like docker image inspect)."""
    found, missing = [], []
    with open_store(g) as store:
        for ref in refs_:
            try:
                found.append(store.inspect(ref))
            except ImageNotFound:
                missing.append(ref)
    click.echo(json.dumps(found, indent=4, ensure_ascii=False))
    if missing:
        raise ImageNotFound("no such image: " + ", ".join(missing))


# -- history -----------------------------------------------------------------------

def _ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


@cli.command("history")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-H", "--human", type=bool, default=True, show_default=True,
              help="Sizes and dates in human-readable form.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.argument("ref")
@click.pass_obj
def history_cmd(g: Globals, no_trunc: bool, human: bool, quiet: bool, ref: str) -> None:
    """Show the history of an image (newest first)."""
    with open_store(g) as store:
        entries = store.history(ref)
    now = datetime.now(timezone.utc)

    def ident(e) -> str:
        if e.image_id is None:
            return "<missing>"
        return e.image_id if no_trunc else e.image_id.split(":", 1)[1][:12]

    if quiet:
        for e in entries:
            click.echo(ident(e))
        return
    rows = []
    for e in entries:
        created = _created(e.created)
        when = since(created, now) if human else (e.created or "")
        by = e.created_by.replace("\t", " ").replace("\n", " ") if not no_trunc else e.created_by
        rows.append([ident(e), when, by if no_trunc else _ellipsis(by, 45),
                     human_size(e.size) if human else str(e.size), e.comment])
    click.echo(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows))


# -- tag / rmi ---------------------------------------------------------------------

@cli.command("tag")
@click.argument("source", metavar="SOURCE_IMAGE")
@click.argument("target", metavar="TARGET_IMAGE[:TAG]")
@click.pass_obj
def tag_cmd(g: Globals, source: str, target: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    with open_store(g) as store:
        store.tag(target, source)


@cli.command("rmi")
@click.option("-f", "--force", is_flag=True, help="Remove an image tagged in several repositories by ID.")
@click.argument("refs_", nargs=-1, required=True, metavar="REF...")
@click.pass_obj
def rmi_cmd(g: Globals, force: bool, refs_: tuple[str, ...]) -> None:
    """Remove images (untag; the image goes with its last tag). Space is reclaimed
    by `lamina gc`."""
    errors: list[StoreError] = []
    with open_store(g) as store:
        for ref in refs_:
            try:
                for line in store.remove_image(ref, force=force):
                    click.echo(line)
            except StoreError as e:
                errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        for e in errors[:-1]:
            click.echo(f"lamina: {e}", err=True)
        raise errors[-1]
