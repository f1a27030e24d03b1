"""Build speed against a peer measured in the same run: lamina vs `buildah bud
--isolation chroot --layers` on the multistage sample — a cold build, a rebuild with
nothing changed, and a rebuild after one source file changed. Prints seconds and
the ratio buildah/lamina (> 1 means lamina is faster). Run as root:

    python3 bench/build_bench.py [--repeat 3]

Not a test: these machines are shared and noisy; read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.compiled import byte_compile  # noqa: E402
SAMPLE = REPO / "samples" / "multistage"


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def scenario(build, ctx: Path) -> dict[str, float]:
    out = {"cold": build()}
    out["no change"] = build()
    words = ctx / "src" / "words.txt"
    words.write_text(words.read_text() + f"changed {time.time()}\n")
    out["one file changed"] = build()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    byte_compile()  # lamina as installed from a wheel (bench/compiled.py)
    if os.geteuid() != 0 or not shutil.which("buildah"):
        sys.exit("needs root and buildah (dev/setup installs it)")
    results: dict[str, dict[str, list[float]]] = {"lamina": {}, "buildah": {}}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="lamina-bench-") as tmp:
            tmp = Path(tmp)
            for tool in ("lamina", "buildah"):
                ctx = tmp / f"ctx-{tool}"
                shutil.copytree(SAMPLE, ctx)
                shutil.copy("/bin/busybox", ctx / "busybox")
                if tool == "lamina":
                    store = tmp / "lamina-store"
                    cmd = [sys.executable, "-m", "lamina", "--root", str(store), "build",
                           "--progress", "plain", "-t", "bench", str(ctx)]
                    build = lambda cmd=cmd: timed(cmd, cwd=REPO)  # noqa: E731
                else:
                    root = tmp / "buildah"
                    cmd = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"),
                           "--storage-driver", "vfs", "bud", "--isolation", "chroot", "--layers",
                           "--pull=never", "-t", "bench", str(ctx)]
                    build = lambda cmd=cmd: timed(cmd)  # noqa: E731
                for name, secs in scenario(build, ctx).items():
                    results[tool].setdefault(name, []).append(secs)
    print(f"multistage sample, median of {args.repeat} runs (seconds)")
    print(f"{'scenario':<18}{'lamina':>10}{'buildah':>10}{'buildah/lamina':>16}")
    for name in results["lamina"]:
        lam = statistics.median(results["lamina"][name])
        bah = statistics.median(results["buildah"][name])
        print(f"{name:<18}{lam:>10.2f}{bah:>10.2f}{bah / lam:>16.2f}")


if __name__ == "__main__":
    main()
