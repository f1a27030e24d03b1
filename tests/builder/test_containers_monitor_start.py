"""`lamina run` when the container's monitor cannot start it (a wrong interpreter:
lamina starts its monitor with sys.executable): one clear message, exit status 125
(docker's for "the container could not be started"), no traceback and no hang -
whether the monitor exits at once, fails inside lamina's code or never gets going."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builder.buildkit import REPO
from tests.builder.test_containers import lamina, store  # noqa: F401 - fixture

pytestmark = pytest.mark.root

# lamina's CLI with sys.executable (what the monitor is started with) replaced
WRAPPER = """\
import sys
interpreter, timeout = sys.argv[1], float(sys.argv[2])
sys.executable = interpreter
import lamina.builder.containers.create as create
create.START_TIMEOUT = timeout
from lamina.builder.cli import main
sys.argv = ["lamina"] + sys.argv[3:]
sys.exit(main())
"""


def _interpreters(tmp: Path) -> dict[str, str]:
    failing = tmp / "failing-python"   # lamina imports, its monitor's sandbox does not
    failing.write_text(
        "#!/bin/sh\nshift 2\nexec " + sys.executable + " -c 'import sys, runpy; "
        "sys.modules[\"lamina.builder.sandbox.container\"] = None; sys.argv = [\"m\"] + "
        "sys.argv[1:]; runpy.run_module(\"lamina.builder.containers.monitor\", "
        "run_name=\"__main__\")' \"$@\"\n")
    hanging = tmp / "hanging-python"
    hanging.write_text("#!/bin/sh\nexec sleep 1237\n")
    for p in (failing, hanging):
        p.chmod(0o755)
    return {"exits": "/bin/false", "fails": str(failing), "hangs": str(hanging)}


EXPECTED = {"exits": "lamina: the container's monitor exited at once",
            "fails": "lamina: the container's monitor failed: ModuleNotFoundError: import of "
                     "lamina.builder.sandbox.container halted",
            "hangs": "lamina: the container's monitor did not start it within 2 s"}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_run_fails_clearly_when_its_monitor_cannot_start(store, tmp_path, kind, detach):
    interpreter = _interpreters(tmp_path)[kind]
    args = ["run", *(["-d"] if detach else []), "--network", "none", "bb", "echo", "never"]
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WRAPPER, interpreter, "2", "--root", str(store),
                           *args], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert time.monotonic() - began < 30
    assert done.returncode == 125, done.stderr
    assert done.stdout == ""                        # no container ID, no output
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(EXPECTED[kind]), done.stderr
    status = lamina(store, "ps", "-a", "--format", "{{.Status}}").stdout.splitlines()
    assert status and status[0].startswith("Exited (125)")
    assert subprocess.run(["pgrep", "-f", "^sleep 1237$"], capture_output=True).stdout == b""
