"""Shared test fixtures and the policy for tests that need privileges.

A test marked `@pytest.mark.root` needs root, overlayfs or namespaces. Outside CI
it is skipped, with the reason, when those are missing; when CI=true it is never
skipped — a missing capability there fails the test, loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _root_missing_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (overlayfs, namespaces, device nodes)"
    return None


def require_tool(name: str) -> str:
    """Path of an oracle tool (skopeo, umoci, podman, buildah...). Outside CI a missing
    tool skips the test; in CI it fails (dev/setup installs them all)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (dev/setup installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def pytest_collection_modifyitems(config, items):
    reason = _root_missing_reason()
    if reason is None or IN_CI:
        return  # in CI a missing privilege makes the test fail on its own, never skip
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def busybox_path() -> str:
    """The host's static busybox, from which tests make base root filesystems."""
    path = "/bin/busybox" if os.path.exists("/bin/busybox") else shutil.which("busybox")
    if not path:
        msg = "busybox-static is not installed (dev/setup installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout if shutil.which("file") else ""
    if out and "statically linked" not in out and "static-pie" not in out:
        msg = f"{path} is not statically linked (install busybox-static)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Remove temp dirs with lamina's iterative remover before pytest's own cleanup
    runs: some tests make trees nested deeper than Python's recursion limit, and
    pytest's cleanup (shutil.rmtree, recursive) crashes the session on them. Removes
    this run's basetemp, pytest's leftover garbage-* dirs, and the old numbered dirs
    pytest itself would delete (it keeps the newest 3). LAMINA_KEEP_TMP=1 keeps them."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None) if factory is not None else None
    if basetemp is None or os.environ.get("LAMINA_KEEP_TMP"):
        return
    from pathlib import Path

    from lamina.store.locks import remove_tree

    basetemp = Path(basetemp)
    doomed = [basetemp]
    parent = basetemp.parent
    if parent.name.startswith("pytest-of-"):
        numbered = []
        for p in parent.iterdir():
            if p.name.startswith("garbage-"):
                doomed.append(p)
            elif p.name.startswith("pytest-") and p.name[7:].isdigit() and p != basetemp:
                numbered.append((int(p.name[7:]), p))
        doomed += [p for _, p in sorted(numbered)[:-3]]
    for path in doomed:
        try:
            remove_tree(path)
        except OSError:
            pass
