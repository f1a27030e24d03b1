"""Image commands that need only the store: `import`, `images`, `inspect`,
`history`, `tag`, `rmi`. Output follows docker's (columns, sizes, JSON shape), with
docker's `-q`, `--no-trunc`, `--filter` (builder.cli.filters) and `--format`
(builder.cli.listing, builder.cli.gotemplate)."""

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
from lamina.builder.cli.filters import FilterError, parse_image_filters
from lamina.builder.cli.gotemplate import Record, TemplateError
from lamina.builder.cli.inspectview import typed_inspect
from lamina.builder.cli.listing import FormatError, check_format, render_objects, render_rows
from lamina.builder.cli.units import human_size, since
from lamina.store import oci, refs, repodigests
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

IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
                 "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
                 "Containers": "CONTAINERS", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE",
                 "VirtualSize": "VIRTUAL SIZE"}
IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGES_TABLE_DIGESTS = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"


def short_id(digest: str, no_trunc: bool) -> str:
    """docker's stringid.TruncateID: the hex without `sha256:`, 12 characters."""
    return digest if no_trunc else digest.split(":", 1)[-1][:12]


def go_time(t: datetime | None) -> str:
    """Go's time.Time.String() in UTC, as docker's .CreatedAt of an image."""
    return t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC") if t else ""


def _format_option(f):
    return click.option("--format", "fmt", default=None, metavar="FORMAT",
                        help="'table' (default), 'table TEMPLATE', 'json' (one object per line) or a "
                             "Go TEMPLATE (see README: the template subset).")(f)


def _check_format(fmt: str | None) -> None:
    try:
        check_format(fmt)
    except FormatError as e:
        raise click.BadParameter(str(e), param_hint="'--format'") from None


def _render(fmt, rows, headers, default_table) -> None:
    try:
        click.echo(render_rows(fmt, rows, headers, default_table), nl=False)
    except FormatError as e:
        raise click.BadParameter(str(e), param_hint="'--format'") from None
    except TemplateError as e:
        raise StoreError(f"template: {e}") from None


@cli.command("images")
@click.option("-a", "--all", "all_", is_flag=True, help="Accepted for docker compatibility (lamina keeps no "
                                                        "intermediate images).")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate image IDs.")
@click.option("--digests", is_flag=True, help="Show manifest digests.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=REF, since=REF "
                   "(repeatable).")
@_format_option
@click.argument("repository", required=False, metavar="[REPOSITORY[:TAG]]")
@click.pass_obj
def images_cmd(g: Globals, all_: bool, quiet: bool, no_trunc: bool, digests: bool, filters, fmt: str | None,
               repository: str | None) -> None:
    """List images: one row per tag (untagged images as <none>), newest first."""
    _check_format(fmt)
    try:
        flt = parse_image_filters(list(filters) + ([f"reference={repository}"] if repository else []))
    except FilterError as e:
        raise click.BadParameter(str(e), param_hint="'--filter'") from None
    now = datetime.now(timezone.utc)
    epoch = datetime.fromtimestamp(0, timezone.utc)
    if fmt is None and quiet:
        fmt = "{{.ID}}"
    elif digests and fmt and fmt.startswith("table ") and "{{.Digest}}" not in fmt:
        fmt += "\t{{.Digest}}"  # docker's NewImageFormat: --digests adds the column
    with open_store(g) as store:
        summaries = store.images()
        bounds = [(op, _created(store.resolve(ref).config.get("created")) or epoch)
                  for op, refs_ in (("before", flt.before), ("since", flt.since)) for ref in refs_]
        rows = []
        for s in sorted(summaries, key=lambda s: (_created(s.created) or epoch, s.added), reverse=True):
            created = _created(s.created)
            repo_digests = repodigests.for_image(store, s.config_digest)
            # docker: dangling=true lists the images without a tag, dangling=false those
            # with any reference (a digest-only image is in both lists)
            if flt.dangling is True and s.tags or flt.dangling is False and not (s.tags or repo_digests):
                continue
            if any((created or epoch) >= t if op == "before" else (created or epoch) <= t for op, t in bounds):
                continue
            if flt.labels and not flt.labels_match(
                    (store.resolve(s.manifest_digest).config.get("config") or {}).get("Labels")):
                continue
            tags, repo_digests = flt.matching_tags(s.tags), flt.matching_references(repo_digests)
            if flt.references and not (tags or repo_digests):
                continue
            size = human_size(s.size)
            for repo, tag, digest in image_rows(tags, repo_digests, digests, need_digest(fmt, digests)):
                rows.append(Record(
                    Containers="N/A", CreatedAt=go_time(created), CreatedSince=since(created, now),
                    Digest=digest, ID=short_id(s.config_digest, no_trunc), Repository=repo,
                    SharedSize="N/A", Size=size, Tag=tag, UniqueSize="N/A",
                    VirtualSize=human_size(s.size, 4)))  # docker's units.HumanSize: 4 digits
    _render(fmt, rows, IMAGE_HEADERS, IMAGES_TABLE_DIGESTS if digests else IMAGES_TABLE)


def need_digest(fmt: str | None, digests: bool) -> bool:
    """docker's needDigest: the rows of a tag carry the repository's digest with
    --digests or when the format names `{{.Digest}}` (written just so)."""
    return digests or "{{.Digest}}" in (fmt or "")


def image_rows(tags: tuple[str, ...], repo_digests: list[str], digests: bool,
               with_digest: bool) -> list[tuple[str, str, str]]:
    """(REPOSITORY, TAG, DIGEST) rows of one image, as docker's CLI makes them from the
    image's RepoTags and RepoDigests (formatter.imageFormatTaggedAndDigest): the digest
    of a tag's row is the RepoDigests entry of the same repository, one row per digest,
    "<none>" when the repository has none (an image never pushed or pulled there) or
    `with_digest` is off; a repository known only by digest gets rows of its own (tag
    "<none>"; digest "" without --digests). No reference at all: one "<none>" row."""
    if not tags and not repo_digests:
        return [("<none>", "<none>", "<none>")]
    by_repo: dict[str, list[str]] = {}
    for ref in repo_digests:
        name, _, digest = ref.rpartition("@")
        by_repo.setdefault(name, []).append(digest)
    rows = []
    for t in tags:
        r = refs.parse(t, default_tag=False)
        repo = r.familiar_name
        known = by_repo.get(repo, []) if with_digest else []
        rows += [(repo, r.tag or "<none>", d) for d in known] or [(repo, r.tag or "<none>", "<none>")]
    tagged = {refs.parse(t, default_tag=False).familiar_name for t in tags}
    for repo in sorted(set(by_repo) - tagged):
        rows += [(repo, "<none>", d) for d in by_repo[repo]] if digests else [(repo, "<none>", "")]
    return rows


# -- inspect -----------------------------------------------------------------------

class InspectView(dict):
    """An inspect object for templates: docker runs them on its Go struct first, where
    the image ID is the field `ID` (JSON "Id"), so both `{{.ID}}` and `{{.Id}}` work."""

    _ALIASES = {"ID": "Id"}

    def get(self, key, default=None):
        if key not in self and key in self._ALIASES:
            key = self._ALIASES[key]
        return super().get(key, default)

@cli.command("inspect")
@click.option("-f", "--format", "fmt", default=None, metavar="FORMAT",
              help="'json' (default: a JSON list) or a Go TEMPLATE run once per image, e.g. "
                   "'{{.Id}}', '{{json .Config.Env}}', '{{index .RepoTags 0}}'.")
@click.option("--provenance", "show_provenance", is_flag=True,
              help="Print the image's SLSA provenance (an in-toto statement) instead.")
@click.option("--sbom", "show_sbom", is_flag=True, help="Print the image's SPDX SBOM (an in-toto statement) instead.")
@click.argument("refs_", nargs=-1, required=True, metavar="REF...")
@click.pass_obj
def inspect_cmd(g: Globals, fmt: str | None, refs_: tuple[str, ...], show_provenance: bool = False,
                show_sbom: bool = False) -> None:
    """Show image details as JSON (a list, like docker image inspect)."""
    if show_provenance or show_sbom:  # builder.cli.attest
        from lamina.builder.cli.attest import print_attestations
        return print_attestations(g.root, refs_, provenance=show_provenance, sbom=show_sbom)
    _check_format(fmt)
    found, missing = [], []
    with open_store(g) as store:
        for ref in refs_:
            try:
                found.append(store.inspect(ref))
            except ImageNotFound:
                missing.append(ref)
    try:
        click.echo(render_objects(fmt, [InspectView(typed_inspect(o)) for o in found], lambda objs: json.dumps(objs, indent=4, ensure_ascii=False) + "\n"),
                   nl=False)
    except FormatError as e:
        raise click.BadParameter(str(e), param_hint="'--format'") from None
    except TemplateError as e:
        raise StoreError(f"template: {e}") from None
    if missing:
        raise ImageNotFound("no such image: " + ", ".join(missing))


# -- history -----------------------------------------------------------------------

HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                   "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}
HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
HISTORY_TABLE_NONHUMAN = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"


class _GoBool(click.types.BoolParamType):
    """A docker (pflag) boolean value: `--human=false` and also `-H=false`, which click
    hands over as "=false"."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith("="):
            value = value[1:]
        return super().convert(value, param, ctx)


GO_BOOL = _GoBool()


def ellipsis(s: str, n: int) -> str:
    """docker's formatter.Ellipsis: at most n characters, the last one "…" when cut."""
    return s if len(s) <= n else s[: n - 1] + "…"


@cli.command("history")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-H", "--human", type=GO_BOOL, default=True, show_default=True,
              help="Sizes and dates in human-readable form.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@_format_option
@click.argument("ref")
@click.pass_obj
def history_cmd(g: Globals, no_trunc: bool, human: bool, quiet: bool, fmt: str | None, ref: str) -> None:
    """Show the history of an image (newest first)."""
    _check_format(fmt)
    with open_store(g) as store:
        entries = store.history(ref)
    now = datetime.now(timezone.utc)
    rows = []
    for e in entries:
        created = _created(e.created)
        created_at = created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else ""
        by = e.created_by.replace("\t", " ")  # docker's; a cut one-line view also loses newlines
        rows.append(Record(
            Comment=e.comment, CreatedAt=created_at,
            CreatedBy=by if no_trunc else ellipsis(by.replace("\n", " "), 45),
            CreatedSince=since(created, now) if human else created_at,
            ID="<missing>" if e.image_id is None else short_id(e.image_id, no_trunc),
            Size=human_size(e.size) if human else str(e.size)))
    if fmt is None and quiet:
        fmt = "{{.ID}}"
    _render(fmt, rows, HISTORY_HEADERS, HISTORY_TABLE if human else HISTORY_TABLE_NONHUMAN)


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
    from lamina.builder.containers.imagehold import image_users
    from lamina.builder.containers.state import ContainerStore

    errors: list[StoreError] = []
    users = image_users(ContainerStore(g.root))  # docker's conflicts with containers
    with open_store(g) as store:
        for ref in refs_:
            try:
                for line in store.remove_image(ref, force=force, users=users):
                    click.echo(line)
            except StoreError as e:
                errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        for e in errors[:-1]:
            click.echo(f"lamina: {e}", err=True)
        raise errors[-1]
