"""`lamina run`: the image's command in the sandbox, exit codes passed through, writes
discarded, docker's Entrypoint/Cmd rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lamina.builder.runimage import image_command
from lamina.builder.errors import BuildError
from tests.builder.buildkit import REPO, build, make_context

pytestmark = pytest.mark.root


def lamina(root, *args):
    return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_image_command_follows_docker():
    assert image_command({"Entrypoint": ["/e"], "Cmd": ["c"]}, []) == ("/e", "c")
    assert image_command({"Entrypoint": ["/e"], "Cmd": ["c"]}, ["x", "y"]) == ("/e", "x", "y")
    assert image_command({"Cmd": ["/bin/c", "-v"]}, []) == ("/bin/c", "-v")
    with pytest.raises(BuildError, match="no command"):
        image_command({}, [])


def test_run_uses_the_image_config_and_discards_writes(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
ENV GREETING=hi
WORKDIR /srv
USER 1000:1000
CMD ["/bin/sh", "-c", "echo $GREETING from $(pwd) as $(id -u); echo x > /tmp/written"]
""", {})
    build(root, ctx, "-t", "runme").check()
    first = lamina(root, "run", "--rm", "runme")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "hi from /srv as 1000\n"
    again = lamina(root, "run", "runme", "/bin/sh", "-c", "cat /tmp/written 2>&1; exit 7")
    assert again.returncode == 7                      # the command's exit code
    assert "No such file" in again.stdout             # the first run's write is gone
    custom = lamina(root, "run", "-e", "GREETING=yo", "-u", "0", "-w", "/", "runme",
                    "/bin/sh", "-c", "echo $GREETING $(id -u) $(pwd)")
    assert custom.stdout == "yo 0 /\n"


def test_run_of_an_unknown_image_is_one_clear_error(build_store):
    root, _ = build_store
    r = lamina(root, "run", "no-such-image:1")
    assert r.returncode == 125  # docker run: 125, the container could not be made
    assert "Traceback" not in r.stderr and "no-such-image" in r.stderr
