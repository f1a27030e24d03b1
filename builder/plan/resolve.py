"""Resolving one instruction: its words expanded with the variables in scope and
its flags checked and defaulted, BuildKit's way, giving a `builder.resolved` value.

Which words are expanded follows BuildKit: ENV/LABEL keys and values, COPY/ADD
sources, destination, --chown, --chmod and --exclude, WORKDIR, USER, VOLUME,
EXPOSE (split into words), STOPSIGNAL, RUN --mount values and ARG defaults. RUN,
CMD and ENTRYPOINT text is never expanded here (the shell does it); MAINTAINER,
SHELL and HEALTHCHECK are taken as written; `--from` must not hold a variable.

The caller (`builder.plan`) threads the scope and config from step to step; this
module only reads them through a `ResolveContext`. Pure functions.
"""

from __future__ import annotations

import posixpath

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lamina.builder.errors import BuildError
from lamina.builder.plan.configvalues import (
    check_signal, go_clean, normalize_workdir, parse_healthcheck_interval, parse_port_specs,
)
from lamina.builder.plan.imageconfig import ImageConfig
from lamina.builder.plan.resolved import (
    Healthcheck, InlineFile, Mount, ResolvedCmd, ResolvedCopy, ResolvedEntrypoint, ResolvedEnv,
    ResolvedExpose, ResolvedHealthcheck, ResolvedLabel, ResolvedMaintainer, ResolvedOnbuild,
    ResolvedRun, ResolvedShell, ResolvedStopsignal, ResolvedUser, ResolvedVolume, ResolvedWorkdir,
)
from lamina.grammar import ast
from lamina.grammar.errors import DockerfileError
from lamina.grammar.heredoc import parse_heredoc_word
from lamina.grammar.mounts import MountError, parse_mount, split_fields
from lamina.grammar.shell import expand, referenced_names, split_words

# (stage index or None, image reference or None) for a --from / from= value
StageLookup = Callable[[str, bool], tuple[int | None, str | None]]

_URL = re.compile(r"^https?://", re.IGNORECASE)
_SYMBOLIC_MODE = re.compile(r"[ugoa]*[-+=][rwxXst]*([-+=][rwxXst]*)*"
                            r"(,[ugoa]*[-+=][rwxXst]*([-+=][rwxXst]*)*)*\Z")
_NETWORKS = ("default", "none", "host")
_SECURITY = ("sandbox", "insecure")


@dataclass
class ResolveContext:
    """What resolving one instruction may read: file, escape token, the variables in
    scope, the image config so far and how to find a stage by name/index."""

    path: str
    escape: str
    instruction: ast.Instruction
    env: Mapping[str, str]
    config: ImageConfig
    lookup: StageLookup
    referenced: set[str] = field(default_factory=set)

    def error(self, message: str) -> BuildError:
        return error_at(self.path, self.instruction, message)

    def expand(self, word: str, *, escape: str | None = None, process_quotes: bool = True) -> str:
        esc = self.escape if escape is None else escape
        try:
            self.referenced |= referenced_names(word, esc, process_quotes=process_quotes)
            return expand(word, self.env, escape=esc, process_quotes=process_quotes)
        except DockerfileError as exc:
            raise self.error(exc.message) from None

    def split(self, word: str) -> list[str]:
        try:
            self.referenced |= referenced_names(word, self.escape)
            return split_words(word, self.env, escape=self.escape)
        except DockerfileError as exc:
            raise self.error(exc.message) from None


def error_at(path: str, instruction: ast.Instruction, message: str) -> BuildError:
    first = instruction.source.split("\n", 1)[0]
    return BuildError(message, file=path, line=instruction.span.start, source_line=first)


def with_shell(config: ImageConfig, command: ast.Command) -> tuple[tuple[str, ...], bool]:
    """The argv of a RUN/CMD/ENTRYPOINT command: shell form wrapped in the SHELL."""
    if isinstance(command, ast.ExecForm):
        return tuple(command.args), False
    return config.effective_shell() + (command.text,), True


def lookup_stage(names: Sequence[str | None], value: str, *, allow_index: bool,
                 error) -> tuple[int | None, str | None]:
    """`--from` value -> (stage index, None) or (None, image reference)."""
    if allow_index and re.fullmatch(r"[+-]?[0-9]+", value):
        index = int(value)
        if not 0 <= index < len(names):
            raise error(f"invalid stage index {index}")
        return index, None
    wanted = value.lower()
    found = [i for i, n in enumerate(names) if n == wanted]
    if found:
        return found[-1], None
    return None, value


# --------------------------------------------------------------------------- metadata


def resolve_env(ctx: ResolveContext, inst: ast.Env | ast.Label):
    # every pair is expanded with the variables as they were before the instruction
    pairs = tuple((ctx.expand(kv.key), ctx.expand(kv.value)) for kv in inst.pairs)
    return ResolvedEnv(pairs) if isinstance(inst, ast.Env) else ResolvedLabel(pairs)


def resolve_expose(ctx: ResolveContext, inst: ast.Expose) -> ResolvedExpose:
    words: list[str] = []
    for raw in sorted(inst.ports):  # BuildKit's parseExpose sorts the raw words
        words.extend(ctx.split(raw))
    try:
        return ResolvedExpose(parse_port_specs(words))
    except BuildError as exc:
        raise ctx.error(exc.message) from None


def resolve_volume(ctx: ResolveContext, inst: ast.Volume) -> ResolvedVolume:
    paths = tuple(ctx.expand(p) for p in inst.paths)
    if any(p == "" for p in paths):
        raise ctx.error("VOLUME specified can not be an empty string")
    return ResolvedVolume(paths)


def resolve_workdir(ctx: ResolveContext, inst: ast.Workdir) -> ResolvedWorkdir:
    path = normalize_workdir(ctx.config.working_dir, ctx.expand(inst.path))
    return ResolvedWorkdir(path, creates_dir=path != "/")


def resolve_stopsignal(ctx: ResolveContext, inst: ast.Stopsignal) -> ResolvedStopsignal:
    value = ctx.expand(inst.signal)
    try:
        return ResolvedStopsignal(check_signal(value))
    except BuildError as exc:
        raise ctx.error(exc.message) from None


def resolve_healthcheck(ctx: ResolveContext, inst: ast.Healthcheck) -> ResolvedHealthcheck:
    if inst.kind == "NONE" or inst.command is None:
        return ResolvedHealthcheck(Healthcheck(("NONE",)))
    if isinstance(inst.command, ast.ShellForm):
        test = ("CMD-SHELL", inst.command.text)
    else:
        test = ("CMD",) + tuple(inst.command.args)
    try:
        durations = {name: parse_healthcheck_interval(name, inst.flag(name) or "")
                     for name in ("interval", "timeout", "start-period", "start-interval")}
    except BuildError as exc:
        raise ctx.error(exc.message) from None
    retries_text = inst.flag("retries") or ""
    retries = 0
    if retries_text:
        if not re.fullmatch(r"[+-]?[0-9]+", retries_text):
            raise ctx.error(f'strconv.ParseInt: parsing "{retries_text}": invalid syntax')
        retries = int(retries_text)
        if retries < 0:
            raise ctx.error(f"--retries cannot be negative ({retries})")
    return ResolvedHealthcheck(Healthcheck(
        test=test, interval=durations["interval"], timeout=durations["timeout"],
        start_period=durations["start-period"], start_interval=durations["start-interval"],
        retries=retries))


def onbuild_trigger_text(inst: ast.Onbuild, escape: str) -> str:
    """The trigger as BuildKit records it in OnBuild: the logical line without the
    ONBUILD keyword, followed by each heredoc's body and terminator."""
    lines = inst.source.split("\n")
    logical = ""
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if logical and (line.strip() == "" or line.lstrip().startswith("#")):
            continue  # comments and blank lines inside a continuation are dropped
        if continuation.search(line):
            logical += continuation.sub("", line)
            continue
        logical += line
        break
    text = re.sub(r"(?i)^\s*ONBUILD\s*", "", logical)
    for doc in getattr(inst.instruction, "heredocs", ()):
        text += "\n" + doc.body + doc.delimiter
    return text


def resolve_metadata(ctx: ResolveContext, inst: ast.Instruction):
    """Resolve any instruction except ARG, RUN, COPY and ADD."""
    match inst:
        case ast.Env() | ast.Label():
            return resolve_env(ctx, inst)
        case ast.Maintainer():
            return ResolvedMaintainer(inst.name)
        case ast.Expose():
            return resolve_expose(ctx, inst)
        case ast.Volume():
            return resolve_volume(ctx, inst)
        case ast.User():
            return ResolvedUser(ctx.expand(inst.user))
        case ast.Workdir():
            return resolve_workdir(ctx, inst)
        case ast.Cmd():
            argv, shell_form = with_shell(ctx.config, inst.command)
            return ResolvedCmd(argv, shell_form)
        case ast.Entrypoint():
            argv, shell_form = with_shell(ctx.config, inst.command)
            return ResolvedEntrypoint(argv or None, shell_form)
        case ast.Shell():
            return ResolvedShell(tuple(inst.args))
        case ast.Stopsignal():
            return resolve_stopsignal(ctx, inst)
        case ast.Healthcheck():
            return resolve_healthcheck(ctx, inst)
        case ast.Onbuild():
            return ResolvedOnbuild(onbuild_trigger_text(inst, ctx.escape))
    raise ctx.error(f"{inst.keyword} cannot be resolved here")  # pragma: no cover


# --------------------------------------------------------------------------- RUN


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def resolve_mount(ctx: ResolveContext, value: str, ssh_index: int) -> Mount:
    """One --mount: values expanded one by one (BuildKit expands after the CSV split),
    validated by grammar.mounts, then BuildKit's defaults for ids and targets."""
    try:
        fields = split_fields(value)
    except MountError as exc:
        raise ctx.error(str(exc)) from None
    expanded = []
    for item in fields:
        key, eq, val = item.partition("=")
        expanded.append(_csv_field(f"{key}={ctx.expand(val)}" if eq else item))
    try:
        m = parse_mount(",".join(expanded))
    except MountError as exc:
        raise ctx.error(str(exc)) from None

    from_stage = from_image = None
    if m.from_ and m.type != "tmpfs":
        from_stage, from_image = ctx.lookup(m.from_, False)
    target, mount_id, mode = m.target, m.id, m.mode
    if m.type in ("bind", "cache", "tmpfs"):
        # no target: BuildKit mounts at the working directory (an error only at "/")
        if not target.startswith("/"):
            target = "/" + ctx.config.working_dir.strip("/") + "/" + target
        target = go_clean(target)
        if target == "/":
            raise ctx.error(f'invalid mount target "{target}"')
        if m.type == "cache":
            # BuildKit's default id: the target as written, cleaned ("." when absent)
            mount_id = mount_id or go_clean(m.target or ".")
    elif m.type == "secret":
        mount_id = m.source or m.id or (m.target.rstrip("/").rsplit("/", 1)[-1] if m.target else "")
        if not mount_id:
            raise ctx.error("invalid secret mount. one of source, target required")
        target = target or f"/run/secrets/{mount_id}"
    elif m.type == "ssh":
        if m.source:
            raise ctx.error("ssh does not support source")
        mount_id = mount_id or "default"
        target = target or f"/run/buildkit/ssh_agent.{ssh_index}"
        mode = 0o600 if mode is None else mode
    return Mount(
        type=m.type, target=target, source=m.source if m.type != "secret" else "",
        from_=m.from_, from_stage=from_stage, from_image=from_image, id=mount_id,
        sharing=(m.sharing or "shared") if m.type == "cache" else "", readonly=m.readonly,
        required=m.required, mode=mode, uid=m.uid, gid=m.gid, size=m.size, env=m.env)


def resolve_run(ctx: ResolveContext, inst: ast.Run) -> ResolvedRun:
    network = ctx.expand(inst.flag("network") or "default")
    if network not in _NETWORKS:
        raise ctx.error(f'unsupported network mode "{network}"')
    security = ctx.expand(inst.flag("security") or "sandbox")
    if security not in _SECURITY:
        raise ctx.error(f'unsupported security mode "{security}"')
    mounts: list[Mount] = []
    ssh = 0
    for value in inst.flag_values("mount"):
        mount = resolve_mount(ctx, value, ssh)
        ssh += mount.type == "ssh"
        mounts.append(mount)

    files: tuple[InlineFile, ...] = ()
    command = inst.command
    if inst.heredocs:
        if not isinstance(command, ast.ShellForm):
            raise ctx.error("parsing produced an invalid run command")
        marker = parse_heredoc_word(command.text)
        if marker is not None and len(inst.heredocs) >= 1:
            doc = inst.heredocs[0]
            data = doc.content
            if data.startswith("#!"):
                # a script with a shebang: BuildKit mounts it and runs the file
                files = (InlineFile(doc.delimiter, data, 0o755),)
                # as BuildKit: path.Join("/dev/pipes/", name), run through the shell
                command = ast.ShellForm(posixpath.normpath("/dev/pipes/" + doc.delimiter))
            else:
                command = ast.ShellForm(data)
        else:
            text = command.text
            for doc in inst.heredocs:
                text += "\n" + doc.body + doc.delimiter
            command = ast.ShellForm(text)
    argv, shell_form = with_shell(ctx.config, command)
    return ResolvedRun(argv=argv, shell_form=shell_form, mounts=tuple(mounts), network=network,
                       security=security, files=files)


# --------------------------------------------------------------------------- COPY / ADD


def dest_path(workdir: str, dest: str) -> str:
    """BuildKit's pathRelativeToWorkingDir: absolute, cleaned, trailing slash kept."""
    keep_slash = dest.endswith("/") or dest.endswith("/.") or dest in ("", ".")
    joined = dest if dest.startswith("/") else (workdir or "/") + "/" + dest
    path = go_clean(joined)
    if keep_slash and path != "/":
        path += "/"
    return path


def check_chmod(ctx: ResolveContext, chmod: str) -> None:
    if not chmod:
        return
    if re.fullmatch(r"[0-7]+", chmod):
        if int(chmod, 8) > 0o7777:
            raise ctx.error(f"invalid chmod parameter: '{chmod}'. it should be octal string "
                            "and between 0 and 07777")
        return
    if re.fullmatch(r"[0-9]+", chmod) or not _SYMBOLIC_MODE.match(chmod):
        raise ctx.error(f"invalid chmod parameter: '{chmod}'. it should be octal string "
                        "and between 0 and 07777")


def resolve_copy(ctx: ResolveContext, inst: ast.Copy | ast.Add) -> ResolvedCopy:
    keyword = inst.keyword
    from_ = inst.flag("from") or ""
    from_stage = from_image = None
    if from_:
        try:
            plain = expand(from_, {}, escape=ctx.escape)
        except DockerfileError:
            plain = None
        if plain != from_:
            raise ctx.error("variable expansion is not supported for --from, define a new stage "
                            "with FROM using ARG from global scope as a workaround")
        from_stage, from_image = ctx.lookup(from_, True)

    sources: list[str] = []
    inline: list[InlineFile] = []
    for word in inst.sources:
        doc = None if inst.exec_form else inst.heredoc_for(word)
        if doc is not None:
            data = doc.content
            if doc.expand:
                data = ctx.expand(data, escape="\\", process_quotes=False)
            inline.append(InlineFile(doc.delimiter, data))
        else:
            sources.append(ctx.expand(word))
    dest = ctx.expand(inst.dest)
    chown = ctx.expand(inst.flag("chown") or "")
    chmod = ctx.expand(inst.flag("chmod") or "")
    check_chmod(ctx, chmod)
    exclude = tuple(ctx.expand(v) for v in inst.flag_values("exclude"))
    checksum = ctx.expand(inst.flag("checksum") or "") if keyword == "ADD" else ""

    for src in sources:
        if _URL.match(src) and keyword == "COPY":
            raise ctx.error("source can't be a URL for COPY")
    if checksum:
        if len(sources) + len(inline) != 1:
            raise ctx.error("checksum can't be specified for multiple sources")
        if not sources or not (_URL.match(sources[0]) or sources[0].startswith("git@")):
            raise ctx.error("checksum requires HTTP(S) or Git sources")
    unpack = None
    if keyword == "ADD" and inst.has_flag("unpack"):
        unpack = inst.bool_flag("unpack")
    return ResolvedCopy(
        keyword=keyword, sources=tuple(sources), dest=dest,
        dest_path=dest_path(ctx.config.working_dir, dest), inline=tuple(inline), from_=from_,
        from_stage=from_stage, from_image=from_image, chown=chown, chmod=chmod,
        link=inst.bool_flag("link"), parents=inst.bool_flag("parents"), exclude=exclude,
        checksum=checksum, keep_git_dir=inst.bool_flag("keep-git-dir"), unpack=unpack)


def _mount_from(value: str) -> tuple[str, str]:
    """(type, from) of a --mount value, before expansion (for the stage graph)."""
    try:
        fields = split_fields(value)
    except MountError:
        return "bind", ""
    kind, source = "bind", ""
    for item in fields:
        key, eq, val = item.partition("=")
        if eq and key.lower() == "type":
            kind = val.lower()
        elif eq and key.lower() == "from":
            source = val
    return kind, source


def stage_references(inst: ast.Instruction) -> list[tuple[str, bool]]:
    """(value, allow_index) of each stage/image reference an instruction makes (COPY/ADD
    --from, RUN --mount from=), before expansion: the edges of the stage graph."""
    if isinstance(inst, ast.Onbuild):
        return []
    out: list[tuple[str, bool]] = []
    if isinstance(inst, (ast.Copy, ast.Add)) and inst.flag("from"):
        out.append((inst.flag("from"), True))
    if isinstance(inst, ast.Run):
        for value in inst.flag_values("mount"):
            kind, source = _mount_from(value)
            if source and kind != "tmpfs":
                out.append((source, False))
    return out


__all__ = ["stage_references", 
    "ResolveContext", "StageLookup", "error_at", "lookup_stage", "with_shell",
    "resolve_metadata", "resolve_run", "resolve_mount", "resolve_copy", "dest_path",
    "onbuild_trigger_text",
]
