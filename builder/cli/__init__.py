"""The `lamina` command line: `main()` runs the click group and turns every lamina
error (DockerfileError, StoreError, BuildError) into one message on stderr and a
non-zero exit. A Python traceback shown to a user is a bug."""

from __future__ import annotations

import os
import sys
import traceback

import click

from lamina.grammar import DockerfileError
from lamina.store import StoreError
from lamina.builder.errors import BuildError
from lamina.builder.cli.app import cli
# each command module registers its commands on `cli` when imported
from lamina.builder.cli import archive, bake, build, images, maintenance, registry, run, version  # noqa: F401

# exit codes: 1 user/build error, 2 usage (click), 130 interrupted
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70  # EX_SOFTWARE


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="lamina", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv  # ctx.exit(N) / click.exceptions.Exit(N) with standalone_mode off
    except click.exceptions.Abort:
        click.echo("lamina: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("lamina: interrupted", err=True)
        return EXIT_INTERRUPTED
    except (DockerfileError, StoreError, BuildError) as e:
        click.echo(f"lamina: {e}", err=True)
        return EXIT_ERROR
    except OSError as e:
        # disk full, permission denied, ...: one line naming the path
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        click.echo(f"lamina: {e.strerror or e}{where}", err=True)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - a bug in lamina: still one clear message
        if os.environ.get("LAMINA_DEBUG"):
            traceback.print_exc()
        click.echo(f"lamina: internal error: {type(e).__name__}: {e} "
                   "(a bug in lamina; run with LAMINA_DEBUG=1 for the traceback)", err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":  # python -m builder.cli
    sys.exit(main())
