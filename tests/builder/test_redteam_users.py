"""Red-team: the image's /etc/passwd and /etc/group are read by lamina itself, on the
host, for every RUN (and `lamina run`, `lamina exec -u`), to resolve the USER.

- A RUN can leave a sparse /etc/passwd of any size (`truncate -s 100G`): lamina read it
  whole into memory - outside the step's cgroup, past any `--memory` limit - so one
  Dockerfile line took the host's memory (1 GiB -> 3 GiB of lamina's RSS).
- `lamina exec -u NAME` reads a running container's upper dir, which the container
  changes at will: the file was looked up (symlinks resolved inside the image) and then
  opened again by its host path, following whatever symlink the container had swapped
  in meanwhile (renameat2 RENAME_EXCHANGE in a loop): a host file was read as the
  container's passwd (seen: `uid=4242` from a host file) - a FIFO or /dev/zero hangs or
  exhausts lamina.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lamina.builder.sandbox import overlay
from lamina.builder.sandbox.users import UserLookupError, resolve_user_in_layers

PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"


def _layer(tmp_path, name="layer"):
    layer = tmp_path / name
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text(PASSWD)
    (layer / "etc" / "group").write_text("root:x:0:\nstaff:x:50:alice\n")
    return layer


def test_a_huge_sparse_passwd_is_not_read_into_memory(tmp_path):
    layer = _layer(tmp_path)
    with open(layer / "etc" / "passwd", "r+b") as f:
        f.truncate(4 << 30)  # sparse: no disk used
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from lamina.builder.sandbox.users import UserLookupError, resolve_user_in_layers
        try:
            resolve_user_in_layers([{str(layer)!r}], "alice")
        except UserLookupError as e:
            print("refused:", e)
        else:
            print("resolved")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("refused:") and "/etc/passwd" in p.stdout, p.stdout


def test_a_file_swapped_for_a_symlink_after_the_lookup_is_not_followed_out(tmp_path, monkeypatch):
    """The race made deterministic: the container swaps /etc/passwd for a link to a
    host file right after lamina looked it up."""
    host_file = tmp_path / "host-passwd"
    host_file.write_text("alice:x:4242:4242::/:/bin/sh\n")
    upper = _layer(tmp_path, "upper")
    original = overlay.LayerStack.lookup

    def racing_lookup(self, path, follow=True):
        entry = original(self, path, follow)
        if entry is not None and path == "/etc/passwd":
            os.rename(entry.host_path, entry.host_path.with_name("passwd.old"))
            os.symlink(host_file, entry.host_path)
        return entry

    monkeypatch.setattr(overlay.LayerStack, "lookup", racing_lookup)
    try:
        who = resolve_user_in_layers([upper], "alice")
    except UserLookupError:
        return  # refused: fine
    assert who.uid != 4242, "a host file was read as the image's /etc/passwd"


def test_an_ordinary_passwd_still_resolves(tmp_path):
    who = resolve_user_in_layers([_layer(tmp_path)], "alice")
    assert (who.uid, who.gid, who.groups) == (1000, 1000, (50,))
