"""`lamina build`: options as docker/buildx name them; parses the Dockerfile
(reporting syntax errors) and hands the build to the executor."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.cli.attest import Attest, attestation_options
from lamina.builder.cli.resources import parse_limits, resource_options
from lamina.builder.errors import BuildError


def parse_ulimit_flags(ctx, param, values):
    """`--ulimit TYPE=SOFT[:HARD]` (repeatable): builder.sandbox.ulimits' canonical tuple;
    a bad one is a usage error (exit 2), with docker's wording."""
    from lamina.builder.sandbox.ulimits import UlimitError, parse_ulimits

    try:
        return parse_ulimits(values)
    except UlimitError as e:
        raise click.BadParameter(e.message, ctx, param) from None


@cli.command()
@click.option("-t", "--tag", "tags", multiple=True, metavar="REF", help="Name and optionally tag (name:tag).")
@click.option("-f", "--file", "dockerfile", metavar="FILE", default=None,
              help="Dockerfile path (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Set a build-time variable.")
@click.option("--label", "labels", multiple=True, metavar="K=V",
              help="Set a label on the image (over a Dockerfile LABEL of the same key).")
@click.option("--target", metavar="STAGE", default=None, help="Build up to this stage.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--pull", is_flag=True, help="Look up every base image tag in its registry again "
              "(a base named by digest is never fetched twice).")
@click.option("--push", is_flag=True, help="Push every -t tag to its registry after the build "
              "(as -o type=registry).")
@click.option("--network", type=click.Choice(["default", "none", "host"]), default="default",
              help="Network for RUN steps: default (own namespace with outbound access, as "
                   "docker), none (only lo) or host.")
@click.option("--progress", type=click.Choice(["auto", "tty", "plain", "json"]), default="auto")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only the image ID on success (progress and warnings only on failure).")
@click.option("--secret", "secrets", multiple=True, metavar="id=ID,src=PATH")
@click.option("--ssh", "ssh", multiple=True, metavar="default|ID[=SOCKET|KEY[,KEY]]",
              help="SSH agent socket or keys to expose to RUN --mount=type=ssh.")
@click.option("--iidfile", metavar="FILE", default=None, help="Write the image ID (config digest) here.")
@click.option("--output", "-o", "outputs", multiple=True,
              metavar="type=oci|docker|tar|local,dest=PATH|type=image|registry[,name=REF][,push=true]",
              help="Also write the image there (buildx's exporters); type=image tags it name= "
                   "(default: the -t tags), push=true or type=registry pushes those.")
@click.option("--allow", "allow", multiple=True, metavar="network.host|fs.read=PATH",
              help="Entitlement: network.host lets RUN --network=host use the host's network; "
                   "fs.read=PATH lets ADD read a git repository (file://) under PATH.")
@click.option("--cache-from", "cache_from", multiple=True, metavar="type=registry,ref=REF|type=local,src=DIR",
              help="Read a build cache (builder.remotecache); unreadable: a warning.")
@click.option("--cache-to", "cache_to", multiple=True,
              metavar="type=registry,ref=REF|type=local,dest=DIR|type=inline[,mode=min|max]",
              help="Write the build cache there after the build; failing: a warning.")
@click.option("--timestamp", "timestamp", metavar="SECONDS|git", default=None,
              help="SOURCE_DATE_EPOCH of the build (default: --build-arg SOURCE_DATE_EPOCH, "
                   "then $SOURCE_DATE_EPOCH, then 0); git: the commit time of the context's HEAD.")
@click.option("--check", "check", is_flag=True,
              help="Run the build checks only (no build): print findings, exit 1 if any.")
@click.option("--ulimit", "ulimits", multiple=True, metavar="TYPE=SOFT[:HARD]", callback=parse_ulimit_flags,
              help="Resource limit (rlimit) of every RUN, as docker's: nofile=1024:2048, "
                   "fsize=1048576; -1 is unlimited (default: what lamina has).")
@resource_options  # -m/--memory, --pids-limit, --cpu-*... (builder.cli.resources)
@attestation_options  # --provenance, --sbom (builder.cli.attest; read from **resource_flags)
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def build(g: Globals, tags, dockerfile, build_args, target, no_cache, pull, push, network, progress, secrets,
          ssh, iidfile, outputs, allow, cache_from, cache_to, context: Path, check: bool = False, timestamp: str | None = None,
          quiet: bool = False, labels=(), ulimits=(), **resource_flags) -> None:
    """Build an image from a Dockerfile and a context directory."""
    with _quiet_stderr(quiet):
        _build(g, tags, dockerfile, build_args, target, no_cache, pull, push, network, progress, secrets,
               ssh, iidfile, outputs, allow, cache_from, cache_to, context, check, timestamp,
               labels=labels, ulimits=ulimits, **resource_flags)


@contextlib.contextmanager
def _quiet_stderr(quiet: bool):
    """`docker build -q`: stdout gets the image ID alone; what the build writes on
    stderr (progress, warnings) is held back, and shown only if the build fails."""
    if not quiet:
        yield
        return
    import io
    import sys

    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise


def _build(g: Globals, tags, dockerfile, build_args, target, no_cache, pull, push, network, progress, secrets,
           ssh, iidfile, outputs, allow, cache_from, cache_to, context: Path, check: bool, timestamp: str | None,
           labels=(), ulimits=(), **resource_flags) -> None:
    import dataclasses
    import os
    from lamina.builder.context.sourcedate import ARG, resolve_source_date

    args = _build_args(build_args)
    dockerfile_path = Path(dockerfile) if dockerfile else context / "Dockerfile"
    epoch = None if check else resolve_source_date(timestamp, args, os.environ, context)
    key = None
    if not check:  # nothing changed since a build that was all cache hits? (builder.rebuild)
        from lamina.builder import rebuild

        key = rebuild.request_key(click.get_current_context().params, args, g.root)
        if key is not None:
            unchanged = rebuild.replay(
                g.root, key, tags=tags, context=context, epoch=epoch,
                dockerfile=dockerfile_path, progress_mode=progress)
            if unchanged is not None:
                if iidfile:
                    Path(iidfile).write_text(unchanged)
                click.echo(unchanged)
                return
    from lamina.builder.executor import BuildOptions
    from lamina.builder.outputs import deliver_image, image_names, parse_output, write_output
    from lamina.builder.progress import make_progress
    from lamina.builder.steps.ssh import parse_ssh_flags
    from lamina.store.store import Store

    from lamina.builder.cli.check import check_command, summarize, warn_before_build

    if check:  # lint only, as `docker build --check`
        with Store(g.root) as lint_store:
            raise click.exceptions.Exit(check_command(
                lint_store, context=context, dockerfile=dockerfile_path,
                build_args=args, target=target))
    from lamina.builder.remotecache import parse_cache_spec
    cache_imports = tuple(parse_cache_spec(v, export=False) for v in cache_from)
    cache_exports = tuple(parse_cache_spec(v, export=True) for v in cache_to)
    if epoch is not None:  # RUN sees the number (as BuildKit) where an ARG declares it
        args[ARG] = str(epoch)
    attest = Attest.from_flags(resource_flags)
    options = BuildOptions(
        context_dir=context,
        dockerfile=dockerfile_path,
        tags=tuple(tags),
        build_args=args,
        source_date_epoch=epoch,
        target=target,
        no_cache=no_cache,
        pull=pull,
        network=network,
        allow_network_host="network.host" in allow,
        secrets=_secrets(secrets),
        ssh=parse_ssh_flags(ssh),
        allowed_reads=_allowed_reads(allow),
        limits=dataclasses.replace(parse_limits(resource_flags), ulimits=ulimits),
        cache_from=cache_imports,
        cache_to=cache_exports,
        labels=_labels(labels),
    )
    wanted = [parse_output(o) for o in outputs]
    image_names(wanted, tuple(tags), push)  # a name to tag/push is missing: said before the build
    json_view = progress == "json"
    progress = make_progress(progress)
    if key is not None:
        progress = rebuild.ProgressRecorder(progress)
    store = Store(g.root)
    try:
        with _sigterm_interrupts():
            findings = warn_before_build(store, progress, context=context,
                                         dockerfile=options.dockerfile,
                                         build_args=options.build_args, target=target)
            build = attest.new_build(store, options, progress)
            image = build.run()
            attest.attach(store, build, image)  # provenance / SBOM, before any output or push
            for out in wanted:
                write_output(store, image, out, epoch=build.epoch, tags=tuple(tags))
            deliver_image(store, image, wanted, tuple(tags), push,
                          progress_for=lambda ref: _push_progress(quiet=json_view), report=_pushed)
            if key is not None:
                rebuild.record(g.root, key, store=store, build=build, image=image,
                               recorder=progress, findings=findings, tags=tags,
                               context=context, dockerfile=options.dockerfile, epoch=epoch)
    finally:
        progress.close()
        store.close()
    summarize(findings)
    if iidfile:
        Path(iidfile).write_text(image.config_digest)
    click.echo(image.config_digest)


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a CI job cancelled, `kill`) stops a build as Ctrl-C does, so that the
    running step is stopped and its mounts and temp dirs are cleaned up; by default
    SIGTERM would end Python without running any cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _build_args(values) -> dict[str, str]:
    """`--build-arg K=V`; a bare `--build-arg K` takes K from the environment (docker)."""
    import os

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key:
            raise BuildError(f"invalid --build-arg {item!r}: expected KEY=VALUE")
        if not sep:
            if key not in os.environ:
                continue
            value = os.environ[key]
        out[key] = value
    return out


def _labels(values) -> dict[str, str]:
    """`--label K=V` (repeatable, the last of a key wins); a bare `--label K` is K=""
    (docker's ConvertKVStringsToMap)."""
    out = {}
    for item in values:
        key, _, value = item.partition("=")
        if not key:
            raise BuildError(f"invalid --label {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _secrets(values) -> dict[str, Path]:
    """`--secret id=ID,src=PATH` (also `source=`, and `type=file`), as buildx."""
    out = {}
    for item in values:
        fields = {}
        for part in item.split(","):
            k, sep, v = part.partition("=")
            if not sep:
                raise BuildError(f"invalid --secret {item!r}: expected id=ID,src=PATH")
            fields[k.strip().lower()] = v.strip()
        ident = fields.get("id")
        src = fields.get("src") or fields.get("source")
        if fields.get("type", "file") != "file":
            raise BuildError(f"invalid --secret {item!r}: only type=file is supported")
        if not ident or not src:
            raise BuildError(f"invalid --secret {item!r}: both id= and src= are needed")
        path = Path(src)
        if not path.is_file():
            raise BuildError(f"--secret {ident}: {src} is not a readable file")
        out[ident] = path
    return out


def _allowed_reads(values) -> tuple[Path, ...]:
    """`--allow fs.read=PATH` (BuildKit's entitlement); network.host is taken apart,
    other entitlements are refused."""
    out = []
    for item in values:
        if item == "network.host":
            continue  # BuildOptions.allow_network_host
        kind, sep, path = item.partition("=")
        if kind != "fs.read" or not sep or not path:
            raise BuildError(f"invalid --allow {item!r}: lamina supports network.host and "
                             "fs.read=PATH (security.insecure is not allowed)")
        out.append(Path(path))
    return tuple(out)


def _push_progress(quiet: bool):
    """Per-layer progress of a push (`lamina push`'s; none in a --progress json stream)."""
    from lamina.builder.cli.registry import TransferProgress

    return TransferProgress("pushed", quiet)


def _pushed(pushed) -> None:
    """`build --push` / `-o type=registry`: each push said as it is done."""
    click.echo(f"pushed {pushed.reference}: digest: {pushed.digest}", err=True)  # what the tag names
