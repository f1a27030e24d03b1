"""Asking git about the work tree a build context is, without letting that work tree
run anything.

A context is hostile input, its `.git` included: a repository's own config can name
commands git runs on its own (`core.fsmonitor` on `git status`, `filter.<x>.clean`
for files whose attributes name the filter, hooks, `gpg.program` under
`log.showSignature`, an ssh command or a promisor remote's lazy fetch). lamina runs
git as root, so every such command would run as root on the host.

`git_output(directory, *args)` runs `git -C directory ARGS` with: no system or global
config (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL=/dev/null), none of lamina's own GIT_*
variables, no optional locks (the index is never rewritten), and command-line config
that wins over the repository's: fsmonitor off, hooks from /dev/null, no signature
checks, no external diff, every transport refused (`protocol.allow=never`: no fetch,
hence no ssh command, credential helper or proxy), and every filter driver the
repository's config defines emptied (`clean`, `smudge`, `process` = "", not required).
Returns stdout (stripped) or None when git fails, is missing or times out.

`strip_credentials(url)`: a remote URL without the user info a CI checkout often
carries (`https://x-access-token:TOKEN@host/...` -> `https://host/...`), as BuildKit
records it; an ssh user name without a password is kept (`ssh://git@host/...`).
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from pathlib import Path

__all__ = ["git_output", "strip_credentials"]

_SAFE_CONFIG = (
    "core.fsmonitor=false",
    f"core.hooksPath={os.devnull}",
    "core.untrackedCache=false",
    f"core.attributesFile={os.devnull}",
    "log.showSignature=false",
    "diff.external=",
    "protocol.allow=never",
    "submodule.recurse=false",
    "safe.directory=*",  # the config can run nothing here: a checkout of another user's is fine
)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "GIT_ATTR_NOSYSTEM": "1",
                "GIT_NO_REPLACE_OBJECTS": "1", "GIT_PAGER": "cat", "PAGER": "cat",
                "LC_ALL": "C"})
    return env


def _run(directory: Path, config: list[str], args: tuple[str, ...], timeout: float,
         env: dict[str, str]) -> subprocess.CompletedProcess | None:
    # GIT_CONFIG_COUNT/KEY_n/VALUE_n (command-line scope, as -c) and not `-c k=v`,
    # which splits at the first "=" - a driver named `x=y` would escape the override
    env = dict(env)
    for i, item in enumerate(config):
        key, _, value = item.rpartition("=") if item.startswith("filter.") else item.partition("=")
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    env["GIT_CONFIG_COUNT"] = str(len(config))
    try:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _filter_drivers(directory: Path, env: dict[str, str], timeout: float) -> list[str]:
    """The names of the filter drivers the repository's config (includes followed)
    defines; reading config runs nothing."""
    p = _run(directory, list(_SAFE_CONFIG), ("config", "--null", "--name-only",
                                             "--get-regexp", r"^filter\."), timeout, env)
    if p is None or p.returncode != 0:
        return []
    names = []
    for key in p.stdout.split(b"\0"):
        key = os.fsdecode(key)
        if key.startswith("filter.") and key.count(".") >= 2:
            names.append(key[len("filter."):key.rindex(".")])
    return sorted(set(names))


def git_output(directory: str | os.PathLike, *args: str, timeout: float = 30) -> str | None:
    directory = Path(directory)
    env = _environment()
    config = list(_SAFE_CONFIG)
    for name in _filter_drivers(directory, env, timeout):
        config += [f"filter.{name}.clean=", f"filter.{name}.smudge=",
                   f"filter.{name}.process=", f"filter.{name}.required=false"]  # split at the last "="
    p = _run(directory, config, args, timeout, env)
    if p is None or p.returncode != 0:
        return None
    return os.fsdecode(p.stdout).strip()


def strip_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url  # scp-like `git@host:path` names a login, not a secret
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if parts.scheme in ("ssh", "git+ssh", "ssh+git") and not has_password:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=host))
