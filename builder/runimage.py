"""`lamina run`: execute an image's command once, in the same sandbox a RUN step uses
(mount, PID, IPC, UTS and — unless `--network host` — network namespaces, over an
overlay of the image's layers: fuse-overlayfs where the sandbox's steps use it,
builder.sandbox.fuseoverlay), and throw the writes away afterwards. The CLI's
`lamina run` makes a container instead (builder.containers); ``image_command`` is
shared with it.

There are no containers to keep: every run starts from the image and its upper dir
is removed when the command ends (docker's `run --rm`). The command is the image's
Entrypoint + Cmd, or Entrypoint + the arguments given (as docker does); the
environment, working directory and user are the image's. stdin is not connected
and there is no TTY: output streams to stdout as it comes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.sandbox import SandboxSpec, run
from lamina.builder.sandbox.users import resolve_user_in_layers
from lamina.store.locks import remove_tree
from lamina.store.oci import check_runtime_config
from lamina.store.store import Store


def image_command(config: dict, args: Sequence[str]) -> tuple[str, ...]:
    """What docker runs: Entrypoint followed by the given args, else by Cmd."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(args) if args else list(config.get("Cmd") or [])
    argv = tuple(entrypoint + cmd)
    if not argv:
        raise BuildError("the image has no command to run (no Entrypoint or Cmd): give one")
    return argv


def run_image(store: Store, ref: str, args: Sequence[str], *, network: str = "none",
              env: Sequence[str] = (), user: str | None = None, workdir: str | None = None,
              on_output: Callable[[bytes], None]) -> int:
    """Run `ref`'s command; returns its exit code (128+N when killed by signal N)."""
    with store.lease() as lease:
        with store.writing():  # resolve and hold with no gc in between
            image = store.resolve(ref)
            lease.hold(layers=[l.diff_id for l in image.layers])
        return _run(store, image, args, network=network, env=env, user=user,
                    workdir=workdir, on_output=on_output)


def _run(store: Store, image, args, *, network, env, user, workdir, on_output) -> int:
    config = dict(image.config.get("config") or {})
    check_runtime_config(config)  # an image stored before the store checked its types
    argv = image_command(config, args)
    lowers = tuple(store.layer_dir(l.diff_id) for l in reversed(image.layers))
    environ = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    for item in env:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise BuildError(f"invalid -e {item!r}: expected KEY=VALUE")
        environ[key] = value
    who = resolve_user_in_layers(lowers, user if user is not None else config.get("User") or "0")
    environ.setdefault("HOME", who.home or "/")
    scratch = store.temp_path("run")
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    try:
        spec = SandboxSpec(lower_dirs=lowers, upper_dir=upper, work_dir=work, argv=argv,
                           env=tuple(environ.items()),
                           cwd=workdir or config.get("WorkingDir") or "/",
                           uid=who.uid, gid=who.gid, groups=tuple(who.groups),
                           network="host" if network == "host" else "none")
        return run(spec, on_output)
    finally:
        remove_tree(Path(scratch))
