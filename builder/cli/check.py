"""Build checks on the command line: `lamina build --check` and the warnings of a build.

Owns how findings reach the user: BuildKit's one-line form `WARN: Rule: message
(line N)` (in a build, through the progress display before the first step and in a
closing summary on stderr; with
`# check=error=true` the build then stops with BuildKit's "lint violation found
for rules: ..." before any step runs), and the `--check` report (each finding with
its file:line:column and a one-line explanation, then a summary; exit status 1
when anything was found, 0 when clean). The checks themselves are
lamina.builder.plan.checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from lamina.builder.errors import BuildError
from lamina.grammar.checks import Finding, explain
from lamina.grammar.directives import CheckOptions

EXIT_FINDINGS = 1


def _base_config(store):
    """ref -> the stored image's OCI config, or None when the store does not hold it."""
    from lamina.store.errors import StoreError

    def lookup(ref: str):
        try:
            return store.resolve(ref).config
        except StoreError:
            return None

    return lookup


def run_checks(store, *, context: Path, dockerfile: Path, build_args: Mapping[str, str],
               target: str | None, all_stages: bool) -> tuple[list[Finding], CheckOptions]:
    """Parse the Dockerfile and run every check (raises the parse error, if any)."""
    from lamina.builder.context.dockerignore import load_ignore_rules
    from lamina.builder.plan.checks import check_dockerfile, check_options
    from lamina.builder.plan.resolved import Platform
    from lamina.grammar import parse
    from lamina.grammar.errors import DockerfileError

    from lamina.builder.context.contextfile import read_context_file

    try:  # symlinks resolved inside its directory: never a host file (hostile context)
        text = read_context_file(dockerfile, "the Dockerfile").decode("utf-8")
    except FileNotFoundError:
        raise BuildError(f"cannot read the Dockerfile {dockerfile}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read the Dockerfile {dockerfile}: {exc}") from None
    parsed = parse(text, path=str(dockerfile))
    try:
        options = check_options(parsed, build_args)
    except DockerfileError as exc:  # a malformed check directive fails the build
        raise BuildError(exc.message, file=exc.file, line=exc.line) from None
    try:
        ignore = load_ignore_rules(context, dockerfile)
    except BuildError:
        ignore = None  # the build reports a bad .dockerignore itself
    findings = check_dockerfile(parsed, build_args=build_args, target=target,
                                platform=Platform.host(), all_stages=all_stages,
                                base_config=_base_config(store) if store is not None else None,
                                ignore=ignore, options=options)
    return findings, options


def check_command(store, *, context: Path, dockerfile: Path, build_args: Mapping[str, str],
                  target: str | None) -> int:
    """`lamina build --check`: report, and the exit status (1 on findings)."""
    findings, _ = run_checks(store, context=context, dockerfile=dockerfile, build_args=build_args,
                             target=target, all_stages=True)
    for f in findings:
        click.echo(f"WARN: {f.short()}")
        click.echo(f"  {f.file}:{f.line}:{f.column}: {explain(f)}")
    if not findings:
        click.echo("Check complete, no warnings found.")
        return 0
    count = len(findings)
    click.echo(f"Check complete, {count} warning{'s' if count != 1 else ''} "
               f"{'have' if count != 1 else 'has'} been found!")
    return EXIT_FINDINGS


def warn_before_build(store, progress, *, context: Path, dockerfile: Path,
                      build_args: Mapping[str, str], target: str | None) -> list[Finding]:
    """A build's checks: each finding as a progress note; with `error=true` in the
    check options, a BuildError before any step runs. A Dockerfile that does not
    parse is left to the build, which reports it."""
    from lamina.grammar.errors import DockerfileError

    try:
        findings, options = run_checks(store, context=context, dockerfile=dockerfile,
                                       build_args=build_args, target=target, all_stages=False)
    except DockerfileError:
        return []
    for f in findings:
        progress.note(f"WARN: {f.short()}")
    if findings and options.error:
        rules = ", ".join(dict.fromkeys(f.rule for f in findings))
        first = findings[0]
        raise BuildError(f"lint violation found for rules: {rules}", file=first.file, line=first.line)
    return findings


def summarize(findings: list[Finding]) -> None:
    """After a build, the findings once more on stderr, as BuildKit's closing summary."""
    if not findings:
        return
    count = len(findings)
    lines = [f"{count} warning{'s' if count != 1 else ''} found:"]
    lines += [f" - {f.short()}" for f in findings]
    click.echo("\n".join(lines), err=True)
