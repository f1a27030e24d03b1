"""Pull and push of a ~200 MB image: lamina against `skopeo copy`, same registry, same run.

    python3 bench/registry_bench.py [--size-mb 200] [--runs 3] [--work DIR]

A root filesystem is generated as bench/store_bench.py does (files of this host's
/usr/share and /usr/lib), imported into a lamina store and exported as an OCI
layout for skopeo (the same gzip blobs both tools send). A real registry
(Debian's docker-registry) runs on loopback with its own storage.

- push: lamina `push` vs `skopeo copy oci:LAYOUT docker://…`, each into a new
  repository of an empty registry per run (so every blob is really uploaded);
- re-push: the same image again, to another repository of that registry (both tools
  mount the blobs they know are there: nothing is uploaded);
- pull: lamina `pull` into a new, empty store vs `skopeo copy docker://… oci:NEWDIR`
  (lamina also decompresses every layer, computes its diff_id and walks it as a tar on
  the way; skopeo only stores the compressed bytes), and `podman pull` into a new,
  empty containers/storage (which decompresses, checks diff_ids and extracts, as a
  builder's store must before a FROM can use the image).

Prints seconds (best of --runs) and the ratio lamina/skopeo (target <= 1.0).
Not a unit test; exits non-zero only if a tool fails.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compiled import byte_compile  # noqa: E402
from bench.store_bench import generate_rootfs  # noqa: E402
from tests.store.registryfix import registry  # noqa: E402


def lamina(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lamina", "--root", str(root), *args]


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    byte_compile()  # as installed from a wheel (bench/compiled.py)
    work = Path(args.work or tempfile.mkdtemp(prefix="lamina-regbench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tree = work / "tree"
        files, size = generate_rootfs(tree, args.size_mb)
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
        store = work / "store"
        subprocess.run(lamina(store, "import", str(tarball), "bench/app:1"), check=True,
                       stdout=subprocess.DEVNULL)
        archive = work / "app.oci.tar"
        subprocess.run(lamina(store, "save", "--format", "oci", "-o", str(archive), "bench/app:1"), check=True)
        layout = work / "layout"
        subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{archive}", f"oci:{layout}:app"], check=True)
        print(f"image: {files} files, {size / 1e6:.0f} MB uncompressed")
        results: dict[str, list[float]] = {k: [] for k in ("push lamina", "push skopeo",
                                                           "re-push lamina", "re-push skopeo",
                                                           "pull lamina", "pull skopeo",
                                                           "pull podman")}
        for i in range(args.runs):
            with registry(work / f"registry{i}") as host:
                results["push lamina"].append(run(lamina(store, "push", "bench/app:1", f"{host}/l{i}/app:1")))
                results["push skopeo"].append(run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                                   f"oci:{layout}:app", f"docker://{host}/s{i}/app:1"]))
                # the same image to another repository of that registry: both tools know
                # where its blobs are (lamina's store.bloblocations, skopeo's blob info
                # cache) and mount them, uploading nothing
                results["re-push lamina"].append(run(lamina(store, "push", "bench/app:1",
                                                            f"{host}/l{i}/copy:1")))
                results["re-push skopeo"].append(run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                                      f"oci:{layout}:app", f"docker://{host}/s{i}/copy:1"]))
                results["pull lamina"].append(run(lamina(work / f"fresh{i}", "pull", f"{host}/l{i}/app:1")))
                results["pull skopeo"].append(run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                                   f"docker://{host}/s{i}/app:1", f"oci:{work / f'out{i}'}:app"]))
                podman = ["podman", "--root", str(work / f"podman{i}"), "--runroot",
                          str(work / f"podman-run{i}"), "--storage-driver", "overlay"]
                try:
                    results["pull podman"].append(run(podman + ["pull", "-q", "--tls-verify=false",
                                                                f"docker://{host}/l{i}/app:1"]))
                finally:  # containers/storage leaves its overlay dir mounted on itself
                    subprocess.run(["umount", "-R", str(work / f"podman{i}" / "overlay")],
                                   capture_output=True)
            shutil.rmtree(work / f"registry{i}", ignore_errors=True)
        best = {k: min(v) for k, v in results.items()}
        for k, v in best.items():
            print(f"{k:15s} {v:7.2f} s")
        print(f"ratio push lamina/skopeo: {best['push lamina'] / best['push skopeo']:.2f}")
        print(f"ratio re-push lamina/skopeo: {best['re-push lamina'] / best['re-push skopeo']:.2f}")
        print(f"ratio pull lamina/skopeo: {best['pull lamina'] / best['pull skopeo']:.2f}")
        print(f"ratio pull lamina/podman: {best['pull lamina'] / best['pull podman']:.2f}")
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
