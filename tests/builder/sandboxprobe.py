"""The static probe the sandbox security tests run inside RUN steps.

- ``probe_layer`` (session fixture): a layer dir holding ``/probe``, built from
  tests/builder/sandbox_probe.c with ``gcc -static`` (a missing gcc skips, or fails
  when CI=true). Stack it on top of ``busybox_rootfs``: ``(probe_layer, busybox_rootfs)``.
- ``parse(output)``: the probe's "NAME ok" / "NAME errno=N" lines as {NAME: "ok" | N}.

Import the fixture into a test module with ``from tests.builder.sandboxprobe import
probe_layer``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

SOURCE = Path(__file__).with_name("sandbox_probe.c")


@pytest.fixture(scope="session")
def probe_layer(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        msg = "gcc is not installed (needed to build the static sandbox probe)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    layer = tmp_path_factory.mktemp("probe-layer")
    proc = subprocess.run([gcc, "-static", "-O1", "-Wall", "-o", str(layer / "probe"),
                           str(SOURCE), "-pthread"], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = f"cannot build the static probe (libc6-dev with libc.a needed):\n{proc.stderr}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    (layer / "probe").chmod(0o755)
    return layer


def parse(output: bytes | str) -> dict[str, object]:
    text = output.decode() if isinstance(output, bytes) else output
    results: dict[str, object] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if rest == "ok":
            results[name] = "ok"
        elif rest.startswith("errno="):
            results[name] = int(rest[len("errno="):])
    return results
