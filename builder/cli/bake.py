"""`lamina bake`: build every target of a Compose file or a buildx bake file
(HCL/JSON) in one invocation, as `docker buildx bake` (see builder.bake)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lamina.builder.cli.app import Globals, cli


@cli.command()
@click.option("-f", "--file", "files", multiple=True, metavar="FILE",
              help="Compose file, docker-bake.hcl or docker-bake.json (repeatable; default: "
                   "the current directory's, in buildx's lookup order).")
@click.option("--set", "sets", multiple=True, metavar="TARGET.KEY=VALUE",
              help="Override a target attribute (TARGET may be a glob such as *).")
@click.option("--print", "print_", is_flag=True,
              help="Print the resolved definition as JSON (buildx's shape) and build nothing.")
@click.option("--push", is_flag=True, help="Push every target's tags (as --set *.push=true).")
@click.option("--load", is_flag=True, help="Accepted for buildx compatibility: images always go "
              "to the store.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--pull", is_flag=True, help="Look up every base image again.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Targets built at once (default: the number of cores).")
@click.option("--fail-fast", is_flag=True, help="Stop every other target when one fails.")
@click.option("--progress", type=click.Choice(["auto", "plain"]), default="auto",
              help="Progress output: lines labelled [TARGET] (auto and plain alike).")
@click.option("--allow", "allow", multiple=True, metavar="ENTITLEMENT",
              help="Let the definition read/write host paths outside the working directory "
                   "(fs.read=PATH, fs.write=PATH, fs=PATH; PATH may be *) or use the host's "
                   "network (network.host), as buildx bake --allow.")
@click.argument("names", nargs=-1, metavar="[TARGET|GROUP...]")
@click.pass_obj
def bake(g: Globals, files, sets, print_, push, load, no_cache, pull, jobs, fail_fast, progress,
         allow, names) -> None:
    """Build the targets of a Compose or bake file (default group: default)."""
    from lamina.builder.bake.files import default_files, load_definition
    from lamina.builder.bake.runner import Bake, BakeOptions, check_target, summary, with_push
    from lamina.builder.bake.targets import freeze, parse_overrides, resolve

    paths = [Path(f) for f in files] if files else default_files(Path.cwd())
    definition = load_definition(paths)
    resolved = resolve(definition, list(names), parse_overrides(list(sets), definition))
    if print_:
        click.echo(json.dumps(resolved.to_json(), indent=2))
        return
    targets = [freeze(name, raw, resolved.base_dirs[name])
               for name, raw in resolved.targets.items()]
    if push:
        targets = [with_push(t) for t in targets]
    for t in targets:  # refuse before anything runs
        for note in check_target(t):
            click.echo(f"lamina: note: {note}", err=True)
    # a bake file is hostile input: host paths outside the working directory (and the
    # definition files' directories) and the host's network only when the user allows
    from lamina.builder.bake.entitlements import check_entitlements, parse_allow
    cwd = Path.cwd()
    granted = parse_allow(allow, cwd)
    check_entitlements(targets, granted, [cwd, *(p.parent for p in paths)], cwd)
    options = BakeOptions(root=g.root, jobs=jobs or 0, push=push, fail_fast=fail_fast,
                          no_cache=no_cache, pull=pull, allow_network_host=granted.network_host)
    results = Bake(targets, options, sys.stderr).run()
    click.echo(summary(results), err=True)
    for r in results:
        if r.image_id:
            click.echo(f"{r.name} {r.image_id}")
    if any(r.status != "built" for r in results):
        raise click.exceptions.Exit(1)
