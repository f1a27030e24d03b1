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

# Each command module registers its commands on `cli` when imported. A command line
# imports only the module of the command it runs (a no-op `lamina build` must not pay
# for the registry client, the archive writers, the template engine...). Listing the
# commands (`lamina --help`, completion) or a name missing from this map imports every
# module of this package, so a new command module is found without being listed here.
COMMAND_MODULES: dict[str, str] = {
    "build": "build", "bake": "bake",
    "save": "archive", "load": "archive",
    "images": "images", "inspect": "images", "history": "images", "import": "images",
    "tag": "images", "rmi": "images",
    "gc": "maintenance", "prune": "maintenance", "fsck": "maintenance", "du": "maintenance",
    "pull": "registry", "push": "registry", "login": "registry", "logout": "registry",
    "run": "run", "version": "version", "diff": "diff", "verify": "verify", "unshare": "unshare",
    **dict.fromkeys(["ps", "logs", "stop", "kill", "rm", "exec", "commit"], "containers"),
}


def _import_commands(module: str | None = None) -> None:
    """Import one module of this package (`module`), or every one (None)."""
    import importlib
    import pkgutil

    names = [module] if module is not None else sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")


def _lazy_commands(group: click.Group) -> None:
    """Have `group` import a command's module when the command is first looked up."""
    eager_get, eager_list = group.get_command, group.list_commands

    def get_command(ctx: click.Context, name: str):
        if name not in group.commands:
            _import_commands(COMMAND_MODULES.get(name))
            if name not in group.commands:
                _import_commands()
        return eager_get(ctx, name)

    def list_commands(ctx: click.Context) -> list[str]:
        _import_commands()
        return eager_list(ctx)

    group.get_command = get_command  # type: ignore[method-assign]
    group.list_commands = list_commands  # type: ignore[method-assign]


_lazy_commands(cli)

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
        # the message may quote a Dockerfile line, a RUN's output, a registry's answer:
        # their control characters are shown in caret form, never sent to the terminal
        from lamina.builder.steplog import controls_shown
        click.echo(f"lamina: {controls_shown(str(e))}", err=True)
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
