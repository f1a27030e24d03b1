"""Benchmark of layer writing: tar + compression speed and size per compression kind and
level, on real trees (default: the host's /usr/lib/python3.* and a busybox + /usr/share
mix). Used to choose store.layers.DEFAULT_COMPRESSION.

    python3 bench/layer_bench.py [DIR...] [--levels]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lamina.store import compression  # noqa: E402
from lamina.store.blobs import BlobStore  # noqa: E402
from lamina.store.layers import extract_layer, write_layer  # noqa: E402
from lamina.store.tarwrite import write_tar  # noqa: E402


def default_trees(tmp: str) -> list[str]:
    trees = sorted(glob.glob("/usr/lib/python3.[0-9]*"))[:1]
    mix = os.path.join(tmp, "busybox-share")
    os.makedirs(os.path.join(mix, "bin"))
    bb = shutil.which("busybox") or "/bin/busybox"
    if os.path.exists(bb):
        shutil.copy2(bb, os.path.join(mix, "bin", "busybox"))
    for sub in ("doc", "perl", "zoneinfo", "i18n", "locale"):
        p = os.path.join("/usr/share", sub)
        if os.path.isdir(p):
            shutil.copytree(p, os.path.join(mix, "share", sub), symlinks=True)
    return trees + [mix]


def tar_size(src: str) -> int:
    class Count:
        n = 0

        def write(self, b):
            self.n += len(b)
    c = Count()
    write_tar(Path(src), c)
    return c.n


def run(src: str, kinds: list[tuple[str, int | None]], tmp: str) -> None:
    raw = tar_size(src)
    print(f"\n{src}: uncompressed tar {raw / 1e6:.1f} MB")
    print(f"{'kind':<10}{'level':>6}{'MB':>9}{'ratio':>8}{'write s':>9}{'MB/s':>8}{'extract s':>11}")
    for kind, level in kinds:
        saved = (compression.GZIP_LEVEL, compression.ZSTD_LEVEL)
        if level is not None:
            if kind == "gzip":
                compression.GZIP_LEVEL = level
            else:
                compression.ZSTD_LEVEL = level
        root = os.path.join(tmp, f"store-{kind}-{level}")
        blobs = BlobStore(Path(root))
        t0 = time.perf_counter()
        layer = write_layer(blobs, Path(src), compression=kind, source_date_epoch=0)
        t1 = time.perf_counter()
        dest = os.path.join(tmp, "x")
        os.mkdir(dest)
        t2 = time.perf_counter()
        extract_layer(blobs, layer.digest, Path(dest), expected_diff_id=layer.diff_id)
        t3 = time.perf_counter()
        shutil.rmtree(dest)
        shutil.rmtree(root)
        compression.GZIP_LEVEL, compression.ZSTD_LEVEL = saved
        print(f"{kind:<10}{level if level is not None else '-':>6}{layer.size / 1e6:>9.2f}"
              f"{raw / layer.size:>8.2f}{t1 - t0:>9.2f}{raw / 1e6 / (t1 - t0):>8.1f}{t3 - t2:>11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="*")
    ap.add_argument("--levels", action="store_true", help="also try other levels")
    args = ap.parse_args()
    kinds: list[tuple[str, int | None]] = [("none", None), ("gzip", None), ("zstd", None)]
    if args.levels:
        kinds += [("gzip", 1), ("gzip", 9), ("zstd", 1), ("zstd", 9), ("zstd", 19)]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        dirs = args.dirs or default_trees(tmp)
        for d in dirs:
            run(d, kinds, tmp)


if __name__ == "__main__":
    main()
