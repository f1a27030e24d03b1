"""`lamina verify`: rebuild an image and compare (builder.attest.verify).

    lamina verify REF|ARCHIVE [CONTEXT]                    from the image's provenance
    lamina verify --dockerfile FILE CONTEXT --expect DIGEST  without provenance

Exit 0 and one line when the rebuild has the same image ID (a compression-only
difference of the manifest digest is explained below that line); otherwise the
explanation of the differences and exit 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from lamina.builder.cli.app import Globals, cli


@cli.command("verify")
@click.argument("args", nargs=-1, required=True, metavar="REF|ARCHIVE [CONTEXT] | CONTEXT")
@click.option("--dockerfile", "-f", "dockerfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The Dockerfile (with --expect; or to override the one the provenance names).")
@click.option("--expect", "expect", default=None, metavar="DIGEST",
              help="Without provenance: the image ID or manifest digest the rebuild must have.")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="With --expect: a build arg.")
@click.option("--target", default=None, metavar="STAGE", help="With --expect: the target stage.")
@click.option("--timestamp", "timestamp", default=None, type=int, metavar="SECONDS",
              help="With --expect: SOURCE_DATE_EPOCH of the rebuild (default: as `lamina build`).")
@click.option("--progress", type=click.Choice(["quiet", "plain", "json"]), default="quiet",
              help="Show the rebuild's progress on stderr (default: quiet).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def verify_cmd(g: Globals, args, dockerfile, expect, build_args, target, timestamp, progress, fmt) -> None:
    """Rebuild an image in a throw-away store and compare it with the original."""
    import sys

    from lamina.builder.attest.verify import result_json, verify_expect, verify_provenance
    from lamina.builder.cli.build import _build_args
    from lamina.builder.progress import Progress, make_progress
    from lamina.store.store import Store

    shown = Progress(sys.stderr) if progress == "quiet" else make_progress(progress)
    with Store(g.root) as store:
        try:
            if expect is not None:
                if dockerfile is None or len(args) != 1:
                    raise click.UsageError("--expect needs --dockerfile FILE and exactly one CONTEXT")
                result = verify_expect(store, Path(args[0]), dockerfile, expect,
                                       build_args=_build_args(build_args), target=target, epoch=timestamp,
                                       progress=shown)
            else:
                if len(args) > 2:
                    raise click.UsageError("expected REF|ARCHIVE [CONTEXT]")
                if build_args or target or timestamp is not None:
                    raise click.UsageError("--build-arg, --target and --timestamp go with --expect: "
                                           "otherwise the provenance says what they were")
                result = verify_provenance(store, args[0], args[1] if len(args) > 1 else None,
                                           dockerfile=dockerfile, progress=shown)
        finally:
            shown.close()
    if fmt == "json":
        click.echo(result_json(result))
    else:
        # a provenance is the image's word: what it recorded (a source's digest, a
        # name) never drives the terminal (caret form, one line each)
        from lamina.builder.steplog import controls_shown

        def shown_line(text: str) -> str:
            return controls_shown(text).replace("\n", "^J")

        click.echo(shown_line(result.summary()))
        for note in result.notes:
            click.echo(f"note: {shown_line(note)}", err=True)
        for line in result.lines:
            click.echo(shown_line(line))
    if not result.identical:
        raise click.exceptions.Exit(1)

