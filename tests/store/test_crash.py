"""Crash safety: a process running `lamina import` / `tag` / `rmi` / `gc` in a loop
is SIGKILLed at random moments, several times; meanwhile a reader checks that
every image it lists is whole. Afterwards `lamina fsck` is clean, the next
commands work, and the dead processes' temp entries are gone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from lamina.store.errors import ImageNotFound
from lamina.store.store import Store
from tests.store.storefix import REPO, lamina, lamina_cmd, make_rootfs, make_tar

LOOP = r"""
import sys
from lamina.builder.cli import main
root, tars = sys.argv[1], sys.argv[2:]
i = 0
while True:
    tar = tars[i % len(tars)]
    main(["--root", root, "import", tar, f"loop:{i}"])
    main(["--root", root, "tag", f"loop:{i}", f"moved:{i % 3}"])
    if i % 2:
        main(["--root", root, "rmi", f"loop:{i - 1}"])
    if i % 5 == 4:
        main(["--root", root, "gc"])
    i += 1
"""


def check_readable(root: Path) -> int:
    """Every image listed loads whole (manifest, config, layer blobs). Returns how many."""
    n = 0
    with Store(root) as s:
        for summary in s.images():
            try:
                img = s.resolve(summary.manifest_digest)
            except ImageNotFound:
                continue  # removed between the listing and now: fine
            assert s.blobs.exists(img.config_digest)
            assert all(s.blobs.exists(l.digest) for l in img.layers)
            n += 1
    return n


def dead_owner_entries(root: Path) -> list[str]:
    out = []
    for name in os.listdir(root / "tmp"):
        if name.startswith("p") and "-" in name:
            pid = int(name[1:].split("-", 1)[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                out.append(name)
    return out


def test_sigkill_at_random_moments_leaves_a_consistent_store(tmp_path, busybox_path):
    tars = [str(make_tar(make_rootfs(tmp_path / f"r{i}", busybox_path,
                                     extra={"data/blob": os.urandom(400_000), "n": str(i).encode()}),
                         tmp_path / f"r{i}.tar")) for i in range(3)]
    root = tmp_path / "store"
    lamina(root, "import", tars[0], "base:1")
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    kills = 0
    for round_ in range(5):
        p = subprocess.Popen([sys.executable, "-c", LOOP, str(root), *tars], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + rng.uniform(0.6, 2.0)
        while time.monotonic() < deadline:
            check_readable(root)  # readers never see a torn image
            time.sleep(0.05)
        assert p.poll() is None, f"loop died on its own (seed {seed}): {p.stderr.read().decode()}"
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        p.stderr.close()
    # single CLI commands killed mid-way
    for i in range(4):
        p = subprocess.Popen(lamina_cmd(root, "import", tars[i % 3], f"single:{i}"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1

    fsck = lamina(root, "fsck", check=False)
    assert fsck.returncode == 0, f"seed {seed}: {fsck.stdout}{fsck.stderr}"
    # the next commands work
    out = lamina(root, "import", tars[1], "after:1").stdout.strip()
    assert out.startswith("sha256:") and len(out) == 71
    assert "after" in lamina(root, "images").stdout
    assert lamina(root, "inspect", "base:1").returncode == 0
    assert dead_owner_entries(root) == []
    assert check_readable(root) >= 2
    lamina(root, "gc")
    fsck = lamina(root, "fsck")
    assert "unreferenced" not in fsck.stdout and "unrecorded" not in fsck.stdout
    with Store(root) as s:
        for img in s.images():
            for l in s.resolve(img.manifest_digest).layers:
                assert s.layer_dir(l.diff_id).is_dir()
    assert kills == 9
