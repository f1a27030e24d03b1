"""Store throughput: `lamina import`, `lamina save` (docker and OCI), `lamina load`
against `tar -c | zstd -T0` and `skopeo copy` on the same ~200 MB root filesystem.

`save --format oci` is measured three ways: the first save of a freshly imported
image (its zstd layer is recompressed to gzip and the gzip blob kept in the store),
a repeat save (that blob reused: a copy), and `--compression zstd` (the stored blob).

    python3 bench/store_bench.py [--size-mb 200] [--runs 3] [--work DIR] [--keep]

The root filesystem is generated deterministically from this host: files of
/usr/share and then /usr/lib, walked in sorted order (directories and names sorted
by bytes), regular files up to 16 MiB each and symlinks, until each half reaches
size/2 MB. Its content therefore depends on the host's installed packages (the
printed file count, byte count and diff_id identify it); on one machine it is the
same on every run. (debootstrap --variant=minbase would give a distribution-
independent tree but needs a package mirror; this machine has no network.)

Every tool runs as a subprocess on warm page cache; each measurement is the best
of --runs. Commands that fill a store (import, load) get a new, never-used store
directory per run; the old ones are deleted only after all runs of that command: on
ext4 without a journal (this VM's root filesystem) every file creation scans past the
inodes deleted in the last 30-60 s (the kernel's recently_deleted()), so deleting the
previous run's 8600 files right before a run made it up to 3x slower and very noisy -
a cost of the benchmark, not of the command. MB/s are of the uncompressed tar of the tree (1 MB = 10^6 bytes).
Prints a table and ratios; exits non-zero only if a tool fails. Not a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("/usr/share", "/usr/lib")
MAX_FILE = 16 << 20
REF = "bench/rootfs:1"


def generate_rootfs(dest: Path, size_mb: int) -> tuple[int, int]:
    """Copy the deterministic selection into dest; returns (files, bytes)."""
    budget = size_mb * 1_000_000 // len(SOURCES)
    files = total = 0
    for src in SOURCES:
        taken = 0
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort(key=os.fsencode)
            if taken >= budget:
                dirnames.clear()
                break
            rel_dir = Path(dirpath).relative_to("/")
            for name in sorted(filenames, key=os.fsencode):
                if taken >= budget:
                    break
                s = Path(dirpath) / name
                try:
                    st = s.lstat()
                except OSError:
                    continue
                target = dest / rel_dir / name
                if stat.S_ISLNK(st.st_mode):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.readlink(s), target)
                elif stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        shutil.copyfile(s, target)
                    except OSError:
                        continue
                    os.chmod(target, st.st_mode & 0o7777)
                    taken += st.st_size
                    total += st.st_size
                else:
                    continue
                files += 1
    return files, total


def lamina(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lamina", "--root", str(root), *args]


def timed(cmd: list[str] | str, runs: int, *, before=None, shell: bool = False) -> float:
    """Best wall time of `runs` runs of cmd (before() runs untimed before each)."""
    best = float("inf")
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, shell=shell, cwd=REPO, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"failed: {cmd}\n{p.stdout}\n{p.stderr}")
        best = min(best, dt)
    return best


def timed_fresh(make_cmd, runs: int, base: Path) -> tuple[float, Path]:
    """Best wall time of `runs` runs of make_cmd(dir), each with a new dir under `base`
    (see the module docstring); returns it and the last dir (the others deleted)."""
    best, dirs = float("inf"), []
    for i in range(runs):
        d = Path(tempfile.mkdtemp(prefix=base.name + ".", dir=base.parent))
        dirs.append(d)
        best = min(best, timed(make_cmd(d), 1))
    for d in dirs[:-1]:
        shutil.rmtree(d, ignore_errors=True)
    return best, dirs[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="work dir (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    a = ap.parse_args()
    for tool in ("tar", "zstd", "skopeo"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    work = a.work or Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rootfs = work / "rootfs"
        if not rootfs.exists():
            files, nbytes = generate_rootfs(rootfs, a.size_mb)
            print(f"rootfs: {files} entries, {nbytes / 1e6:.1f} MB of file data from {', '.join(SOURCES)}")
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--sort=name", "--owner=0", "--group=0",
                        "--numeric-owner", "--mtime=@0", "-cf", str(tarball), "."], check=True)
        mb = tarball.stat().st_size / 1e6
        print(f"tar of it: {mb:.1f} MB, {os.cpu_count()} CPUs, best of {a.runs}")
        results: dict[str, float] = {}
        startup = timed(lamina(work / "empty-store", "images"), a.runs)
        print(f"lamina start-up (`lamina images` on an empty store): {startup:.2f} s, included below")

        results["tar -c | zstd -T0 (3)"] = timed(
            f"tar -C {rootfs} --sort=name -cf - . | zstd -T0 -3 -q -f -o {work}/rootfs.tar.zst",
            a.runs, shell=True)

        results["lamina import"], store = timed_fresh(
            lambda d: lamina(d, "import", str(tarball), REF), a.runs, work / "store")
        results["lamina save (docker)"] = timed(
            lamina(store, "save", REF, "-o", str(work / "l-docker.tar")), a.runs)
        # the first gzip save recompresses: time it on a copy of the just-imported store
        pristine, first = work / "store-pristine", work / "store-first"
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.copytree(store, pristine, symlinks=True)

        def fresh_copy() -> None:
            shutil.rmtree(first, ignore_errors=True)
            shutil.copytree(pristine, first, symlinks=True)

        results["lamina save --format oci (first: zstd->gzip)"] = timed(
            lamina(first, "save", "--format", "oci", REF, "-o", str(work / "l-oci.tar")), a.runs,
            before=fresh_copy)
        results["lamina save --format oci (repeat)"] = timed(
            lamina(store, "save", "--format", "oci", REF, "-o", str(work / "l-oci.tar")), a.runs + 1)
        results["lamina save --format oci --compression zstd"] = timed(
            lamina(store, "save", "--format", "oci", "--compression", "zstd", REF, "-o",
                   str(work / "l-oci-zstd.tar")), a.runs)
        results["lamina load (docker-archive)"], _ = timed_fresh(
            lambda d: lamina(d, "load", "-q", "-i", str(work / "l-docker.tar")), a.runs, work / "load-d")
        results["lamina load (oci-archive)"], _ = timed_fresh(
            lambda d: lamina(d, "load", "-q", "-i", str(work / "l-oci.tar")), a.runs, work / "load-o")

        def rm(p: Path):
            return lambda: p.unlink(missing_ok=True)

        # each format copied to itself: skopeo reads the archive lamina wrote and writes
        # another; and the (gzip) OCI archive converted to docker-archive, which skopeo 1.9
        # cannot do from zstd layers
        results["skopeo copy docker-archive: -> docker-archive:"] = timed(
            ["skopeo", "copy", "-q", f"docker-archive:{work}/l-docker.tar",
             f"docker-archive:{work}/s-docker.tar:{REF}"], a.runs, before=rm(work / "s-docker.tar"))
        results["skopeo copy oci-archive: -> oci-archive:"] = timed(
            ["skopeo", "copy", "-q", f"oci-archive:{work}/l-oci.tar", f"oci-archive:{work}/s-oci.tar:{REF}"],
            a.runs, before=rm(work / "s-oci.tar"))
        results["skopeo copy oci-archive: -> docker-archive:"] = timed(
            ["skopeo", "copy", "-q", f"oci-archive:{work}/l-oci.tar",
             f"docker-archive:{work}/s-conv.tar:{REF}"], a.runs, before=rm(work / "s-conv.tar"))

        sizes = {"zstd": (work / "rootfs.tar.zst").stat().st_size,
                 "lamina oci": (work / "l-oci.tar").stat().st_size,
                 "lamina oci zstd": (work / "l-oci-zstd.tar").stat().st_size}
        width = max(map(len, results))
        print()
        print(f"{'operation'.ljust(width)}  {'seconds':>8}  {'MB/s':>8}")
        for name, secs in results.items():
            print(f"{name.ljust(width)}  {secs:8.2f}  {mb / secs:8.1f}")
        print()
        r = results
        print(f"lamina import / tar|zstd -T0 throughput:            "
              f"{r['tar -c | zstd -T0 (3)'] / r['lamina import']:.2f}x")
        print(f"lamina save (docker) / skopeo docker->docker:       "
              f"{r['skopeo copy docker-archive: -> docker-archive:'] / r['lamina save (docker)']:.2f}x")
        oci_first = r["lamina save --format oci (first: zstd->gzip)"]
        oci_repeat = r["lamina save --format oci (repeat)"]
        print(f"lamina save --format oci (repeat) / skopeo oci->oci: "
              f"{r['skopeo copy oci-archive: -> oci-archive:'] / oci_repeat:.2f}x")
        print(f"lamina save --format oci: first (recompress) {oci_first:.2f} s, repeat {oci_repeat:.2f} s "
              f"({oci_first / oci_repeat:.1f}x)")
        print(f"compressed size: zstd -T0 -3 {sizes['zstd'] / 1e6:.1f} MB, "
              f"lamina OCI archive gzip {sizes['lamina oci'] / 1e6:.1f} MB, "
              f"zstd {sizes['lamina oci zstd'] / 1e6:.1f} MB")
        print(json.dumps({"tar_mb": round(mb, 1), "startup_s": round(startup, 3), "seconds": {k: round(v, 3) for k, v in r.items()}}))
    finally:
        if not a.keep and a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
