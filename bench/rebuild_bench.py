"""Build and rebuild times of lamina against BuildKit and buildah, side by side in one
run (issue 10). Run as root from the repository:

    .venv/bin/python bench/rebuild_bench.py [--repeat 5] [--json bench/out/rebuild.json]

The workload: a Debian bookworm minbase root filesystem (debootstrap, cached as
bench/out/debian-bookworm-rootfs.tar: minbase with python3-minimal and passwd; `--base
TAR` takes another, e.g. the one samples/python-app/make-base.sh makes), imported as `bench/debian:bookworm`
into each builder's own store, a context of 5,000 Python files, and the Dockerfile of
issue 10. Scenarios:

- cold: `--no-cache` build of the workload;
- no-op: a rebuild with nothing changed;
- one file changed: one of the 5,000 source files edited, then a rebuild;
- last RUN changed: the Dockerfile's last RUN edited, then a rebuild;
- multi-stage cold: `--no-cache` build of two independent stages (~2 s each) and a
  final stage copying from both;
- export docker-archive / export oci: the workload image written as an archive
  (`lamina save`, `docker save`, `buildah push docker-archive:/oci-archive:`; docker
  20.10 cannot write OCI archives, so buildah is the only peer there);
- scale cold / scale COPY changed: one RUN writing 1 GB in 50,000 files of random
  bytes, `--no-cache`, then rebuilt after the COPY above it changed.

Also: lamina's peak RSS (the summed resident sets of its whole process tree, sampled
every 20 ms) in the cold and scale builds, and each builder's disk use in a fresh
store for the base, the workload image and a variant sharing its base (another last
RUN), against the two images' unique content (their distinct layer tars).

Peers: BuildKit through a dockerd this bench starts on a private socket (its own
data root, no bridge, no iptables; `DOCKER_BUILDKIT=1 docker build --network none`),
warm (started before the first timed build), and `buildah bud --layers` with its
own --root (overlay driver, chroot isolation). Every builder gets its own copy of the
context and sees the same edits. Before each timed build: `sync`. The builders run in
an order that rotates every round; each figure is the median of --repeat rounds.
Printed as a table with the ratio lamina / best peer (< 1: lamina is faster), and
written as JSON.

Not a test: the machines are shared; compare the builders within one run only.
Everything started here is stopped by pid; the daemons' dirs are removed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.compiled import byte_compile  # noqa: E402


def debian_mirror() -> str:
    """The Debian mirror of this host's apt sources (dev/debian-mirror)."""
    return subprocess.run([str(REPO / "dev" / "debian-mirror")], check=True, capture_output=True,
                          text=True).stdout.strip()


OUT = REPO / "bench" / "out"
BASE_TAR = OUT / "debian-bookworm-rootfs.tar"
BASE_REF = "bench/debian:bookworm"
FILES = 5000

DOCKERFILE = """\
FROM bench/debian:bookworm
RUN cp -a /usr/lib/x86_64-linux-gnu /opt/libcopy
COPY src/ /app/src/
RUN cd /app && find src -name '*.py' | sort | xargs cat | sha256sum > /app/digest
RUN rm -rf /usr/share/doc /usr/share/man && mkdir -p /var/cache/app{stamp}
ENV APP_HOME=/app
WORKDIR /app
CMD ["cat", "/app/digest"]
"""

MULTISTAGE = """\
FROM bench/debian:bookworm AS one
RUN sleep 1.5 && cp -a /usr/lib/x86_64-linux-gnu /opt/one

FROM bench/debian:bookworm AS two
RUN sleep 1.5 && cp -a /usr/share /opt/two

FROM bench/debian:bookworm
COPY --from=one /opt/one/libc.so.6 /one/
COPY --from=two /opt/two/debconf /two/
CMD ["ls", "/one", "/two"]
"""

# the scale variant: one RUN writing 1 GB in 50,000 files (random bytes: nothing
# compresses them), under a COPY whose change reruns it
SCALE = """\
FROM bench/debian:bookworm
COPY stamp.txt /stamp.txt
RUN mkdir /data && cd /data && head -c 1000000000 /dev/urandom | split -b 20000 -a 5 - f
CMD ["ls", "/data"]
"""

SCENARIOS = ("cold", "no-op", "one file changed", "last RUN changed", "multi-stage cold",
             "export docker-archive", "export oci", "scale cold", "scale COPY changed")
# what lamina's peak RSS is reported for (its whole process tree, sampled)
RSS_SCENARIOS = ("cold", "scale cold", "scale COPY changed")


# ------------------------------------------------------------------ the workload

def make_base(tar: Path) -> None:
    """debootstrap minbase (+ python3-minimal, passwd: the sample's base before it gained
    its Python libraries) -> tar."""
    if tar.exists():
        return
    if not shutil.which("debootstrap"):
        sys.exit("debootstrap is missing (dev/setup installs it)")
    tar.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-base-", dir=tar.parent))
    try:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3-minimal,passwd",
                        "bookworm", str(work / "rootfs"), debian_mirror()], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["tar", "-C", str(work / "rootfs"), "--numeric-owner", "-cf",
                        str(work / "rootfs.tar"), "."], check=True)
        os.replace(work / "rootfs.tar", tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_context(ctx: Path) -> None:
    """5,000 small Python modules in 50 packages, and the workload's Dockerfile."""
    for i in range(FILES):
        d = ctx / "src" / f"pkg{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        body = "".join(f"def f{j}(x):\n    return x * {(i * 31 + j * 7) % 997 + 1}\n"
                       for j in range(20))
        (d / f"mod{i % 100:03d}.py").write_text(f"# module {i}\n{body}")
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(stamp=""))
    (ctx / "Multistage.Dockerfile").write_text(MULTISTAGE)
    (ctx / "Scale.Dockerfile").write_text(SCALE)
    (ctx / "stamp.txt").write_text("0\n")


def edit_one_file(ctx: Path, n: int) -> None:
    p = ctx / "src" / "pkg25" / "mod050.py"
    p.write_text(p.read_text() + f"# edit {n}\n")


def edit_last_run(ctx: Path, n: int) -> None:
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(stamp=f"-{n}"))


# ------------------------------------------------------------------ running things

def _pdeathsig() -> None:  # runs in the child: die with the bench
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _python_env() -> dict:
    """The environment for lamina: Python writes its bytecode caches (as an installed
    lamina has them; PYTHONDONTWRITEBYTECODE would recompile changed modules on every
    start)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _tree_rss_kib(pid: int) -> int:
    """The summed VmRSS of `pid` and all its descendants (KiB; 0 once gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


class TreeRss:
    """Samples the summed RSS of a process tree every 20 ms in a thread; `peak` KiB."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _tree_rss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int]:
    """(seconds, peak RSS in KiB of the whole process tree, sampled); exits on failure."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
    rss = TreeRss(proc.pid)
    out = proc.stdout.read()
    peak = rss.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out.decode(errors='replace')[-3000:]}")
    return elapsed, max(peak, usage.ru_maxrss)


class Builder:
    name = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp / self.name.replace("/", "_")
        self.tmp.mkdir()
        self.ctx = self.tmp / "ctx"

    def build(self, dockerfile: str, no_cache: bool) -> tuple[float, int]:
        raise NotImplementedError

    def export(self, fmt: str, dest: Path) -> tuple[float, int] | None:
        """Write the image `bench` as a docker-archive or OCI archive (None: cannot)."""
        raise NotImplementedError

    def storage(self) -> Path:
        """Where this builder keeps its images and layers (for the disk figure)."""
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Lamina(Builder):
    name = "lamina"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.store = self.tmp / "store"
        self.base = [sys.executable, "-m", "lamina", "--root", str(self.store)]

    def load_base(self, tar: Path) -> None:
        subprocess.run(self.base + ["import", str(tar), BASE_REF], check=True,
                       capture_output=True, cwd=REPO, env=_python_env())

    def build(self, dockerfile: str, no_cache: bool) -> tuple[float, int]:
        cmd = self.base + ["build", "--network", "none", "--progress", "plain", "-t", "bench",
                           "-f", str(self.ctx / dockerfile)]
        return run_timed(cmd + (["--no-cache"] if no_cache else []) + [str(self.ctx)],
                         env=_python_env(), cwd=REPO)

    def export(self, fmt: str, dest: Path) -> tuple[float, int] | None:
        return run_timed(self.base + ["save", "--format", "oci" if fmt == "oci" else "docker",
                                      "-o", str(dest), "bench"], env=_python_env(), cwd=REPO)

    def storage(self) -> Path:
        return self.store


class LaminaAt(Lamina):
    """lamina as it was at a git revision (`--baseline REV`): the revision's tree
    unpacked with `git archive`, put first on PYTHONPATH as the package `lamina`."""

    def __init__(self, tmp: Path, rev: str) -> None:
        self.name = f"lamina@{rev}"
        super().__init__(tmp)
        src = self.tmp / "src"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        pkg = self.tmp / "path" / "lamina"
        shutil.copytree(src / "lamina", pkg)
        for sub in ("grammar", "store", "builder"):
            (pkg / sub).symlink_to(src / sub)
        self.env = {**_python_env(), "PYTHONPATH": str(self.tmp / "path")}

    def build(self, dockerfile: str, no_cache: bool) -> tuple[float, int]:
        cmd = self.base + ["build", "--network", "none", "--progress", "plain", "-t", "bench",
                           "-f", str(self.ctx / dockerfile)]
        return run_timed(cmd + (["--no-cache"] if no_cache else []) + [str(self.ctx)],
                         env=self.env, cwd=self.tmp)

    def load_base(self, tar: Path) -> None:
        subprocess.run(self.base + ["import", str(tar), BASE_REF], check=True,
                       capture_output=True, cwd=self.tmp, env=self.env)

    def export(self, fmt: str, dest: Path) -> tuple[float, int] | None:
        return run_timed(self.base + ["save", "-o", str(dest), "bench"] +
                         (["--format", "oci"] if fmt == "oci" else []), env=self.env, cwd=self.tmp)


class BuildKit(Builder):
    """Debian docker.io's dockerd (BuildKit inside) on a private socket."""

    name = "buildkit"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        sock = self.tmp / "docker.sock"
        (self.tmp / "client").mkdir()
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(self.tmp / "client"), "HOME": str(self.tmp)}
        log = open(self.tmp / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            ["/usr/sbin/dockerd", "--host", f"unix://{sock}", "--data-root", str(self.tmp / "data"),
             "--exec-root", str(self.tmp / "exec"), "--pidfile", str(self.tmp / "dockerd.pid"),
             "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
             "--storage-driver=overlay2"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig, env={"PATH": self.env["PATH"]})
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.3)
        self.stop()
        sys.exit("dockerd did not start:\n" + (self.tmp / "dockerd.log").read_text()[-3000:])

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["/usr/bin/docker", *args], env=self.env, capture_output=True, check=check)

    def load_base(self, tar: Path) -> None:
        self.docker("import", str(tar), BASE_REF)

    def build(self, dockerfile: str, no_cache: bool) -> tuple[float, int]:
        cmd = ["/usr/bin/docker", "build", "--network", "none", "--progress", "plain", "-t", "bench",
               "-f", str(self.ctx / dockerfile)]
        return run_timed(cmd + (["--no-cache"] if no_cache else []) + [str(self.ctx)], env=self.env)

    def export(self, fmt: str, dest: Path) -> tuple[float, int] | None:
        if fmt == "oci":
            return None  # docker 20.10's save writes docker-archive only
        return run_timed(["/usr/bin/docker", "save", "-o", str(dest), "bench"], env=self.env)

    def storage(self) -> Path:
        return self.tmp / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class Buildah(Builder):
    name = "buildah"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.base = ["buildah", "--root", str(self.tmp / "root"), "--runroot", str(self.tmp / "run"),
                     "--storage-driver", "overlay"]

    def load_base(self, tar: Path) -> None:
        ctr = subprocess.run(self.base + ["from", "scratch"], check=True, capture_output=True,
                             text=True).stdout.strip()
        subprocess.run(self.base + ["add", ctr, str(tar), "/"], check=True, capture_output=True)
        subprocess.run(self.base + ["commit", ctr, f"localhost/{BASE_REF}"], check=True,
                       capture_output=True)
        subprocess.run(self.base + ["rm", ctr], check=True, capture_output=True)

    def build(self, dockerfile: str, no_cache: bool) -> tuple[float, int]:
        # chroot isolation runs with the host's network (it refuses --network none)
        cmd = self.base + ["bud", "--isolation", "chroot", "--layers", "--pull=never",
                           "-t", "bench", "-f", str(self.ctx / dockerfile)]
        return run_timed(cmd + (["--no-cache"] if no_cache else []) + [str(self.ctx)])

    def export(self, fmt: str, dest: Path) -> tuple[float, int] | None:
        target = f"oci-archive:{dest}" if fmt == "oci" else f"docker-archive:{dest}:bench:latest"
        return run_timed(self.base + ["push", "localhost/bench", target])

    def storage(self) -> Path:
        return self.tmp / "root"

    def stop(self) -> None:  # containers/storage leaves its overlay dir mounted on itself
        subprocess.run(["umount", "-R", str(self.tmp / "root" / "overlay")], capture_output=True)


# ------------------------------------------------------------------ the run

def round_of(scenario: str, b: Builder, n: int) -> tuple[float, int]:
    """One timed build of `scenario` by `b` (n: the round, for unique edits)."""
    if scenario == "cold":
        return b.build("Dockerfile", no_cache=True)
    if scenario == "no-op":
        b.build("Dockerfile", no_cache=False)  # settle whatever an earlier scenario changed
        return b.build("Dockerfile", no_cache=False)
    if scenario == "one file changed":
        b.build("Dockerfile", no_cache=False)
        edit_one_file(b.ctx, n)
        return b.build("Dockerfile", no_cache=False)
    if scenario == "last RUN changed":
        b.build("Dockerfile", no_cache=False)
        edit_last_run(b.ctx, n)
        return b.build("Dockerfile", no_cache=False)
    if scenario == "multi-stage cold":
        return b.build("Multistage.Dockerfile", no_cache=True)
    if scenario.startswith("export "):
        b.build("Dockerfile", no_cache=False)
        dest = b.tmp / "export.tar"
        try:
            return b.export(scenario.split()[1], dest)
        finally:
            dest.unlink(missing_ok=True)
    if scenario == "scale cold":
        return b.build("Scale.Dockerfile", no_cache=True)
    if scenario == "scale COPY changed":
        b.build("Scale.Dockerfile", no_cache=False)
        (b.ctx / "stamp.txt").write_text(f"{n}\n")
        return b.build("Scale.Dockerfile", no_cache=False)
    raise ValueError(scenario)


def disk_use(path: Path) -> int:
    """Bytes allocated under `path` (du: hard links once, this filesystem only)."""
    out = subprocess.run(["du", "-sx", "--block-size=1", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.split()[0])


def disk_figure(cls, tmp: Path, base: Path, lamina_archives: list[Path] | None) -> dict:
    """A fresh store of builder `cls`: the base imported, then the workload image and a
    variant sharing its base (another last RUN) built; its disk use (du) against the
    images' unique content (the sizes of their distinct layer tars, base included,
    from lamina's docker-archives of the same two images)."""
    b = cls(tmp)
    try:
        make_context(b.ctx)
        b.load_base(base)
        b.build("Dockerfile", no_cache=False)
        if lamina_archives is not None:
            b.export("docker-archive", lamina_archives[0])
        edit_last_run(b.ctx, 424242)
        b.build("Dockerfile", no_cache=False)
        if lamina_archives is not None:
            b.export("docker-archive", lamina_archives[1])
        return {"bytes": disk_use(b.storage())}
    finally:
        b.stop()


def unique_content(archives: list[Path]) -> int:
    """Bytes of the distinct layers (by diff_id) of docker-archives: their tar sizes."""
    import hashlib
    import tarfile as tf

    seen: dict[str, int] = {}
    for a in archives:
        with tf.open(a) as t:
            for m in t.getmembers():
                if m.name.endswith("layer.tar") or m.name.startswith("blobs/sha256/"):
                    f = t.extractfile(m)
                    if f is None:
                        continue
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                    seen[h.hexdigest()] = m.size
    return sum(seen.values())


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Linux {platform.release()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scenario", action="append", choices=SCENARIOS,
                    help="run only these (default: all)")
    ap.add_argument("--peer", action="append", choices=("buildkit", "buildah"),
                    help="peers to run (default: both)")
    ap.add_argument("--base", type=Path, default=BASE_TAR, help="root filesystem tar of the base")
    ap.add_argument("--json", type=Path, default=OUT / "rebuild.json")
    ap.add_argument("--baseline", metavar="REV",
                    help="also time lamina at this git revision (before/after in one run)")
    ap.add_argument("--no-disk", action="store_true", help="skip the store disk use figure")
    args = ap.parse_args()
    byte_compile()  # lamina as installed from a wheel (bench/compiled.py)
    if os.geteuid() != 0:
        sys.exit("run as root (dockerd, buildah and lamina's sandbox need it)")
    scenarios = args.scenario or list(SCENARIOS)
    peers = args.peer or ["buildkit", "buildah"]
    make_base(args.base)
    tmp = Path(tempfile.mkdtemp(prefix="rebuild-bench-", dir="/var/tmp"))
    builders: list[Builder] = []
    times = {s: {} for s in scenarios}
    rss: dict[str, list[int]] = {s: [] for s in scenarios if s in RSS_SCENARIOS}
    disk: dict[str, int] = {}
    unique = None
    try:
        classes = {"lamina": Lamina, "buildkit": BuildKit, "buildah": Buildah}
        names = ["lamina", *(["baseline"] if args.baseline else []), *peers]
        for name in names:
            b = LaminaAt(tmp, args.baseline) if name == "baseline" else classes[name](tmp)
            builders.append(b)
            make_context(b.ctx)
            b.load_base(args.base)
            b.build("Dockerfile", no_cache=False)  # warm: daemon, caches, page cache
        times = {s: {b.name: [] for b in builders} for s in scenarios}
        for s in scenarios:
            for n in range(args.repeat):
                k = n % len(builders)
                for b in builders[k:] + builders[:k]:
                    got = round_of(s, b, n + 1000 * SCENARIOS.index(s))
                    if got is None:  # this builder cannot (docker 20.10: no OCI save)
                        continue
                    secs, maxrss = got
                    times[s][b.name].append(secs)
                    if b.name == "lamina" and s in rss:
                        rss[s].append(maxrss)
                print(f"  {s} round {n + 1}: " + "  ".join(
                    f"{name} {v[-1]:.2f}" for name, v in times[s].items() if v), file=sys.stderr)
        for b in builders:
            b.stop()
        if not args.no_disk:
            archives = [tmp / "disk-a.tar", tmp / "disk-b.tar"]
            for name in ["lamina", *peers]:
                d = tmp / "disk"
                d.mkdir(exist_ok=True)
                disk[name] = disk_figure(classes[name], d, args.base,
                                         archives if name == "lamina" else None)["bytes"]
                print(f"  disk {name}: {disk[name] / 2**20:.0f} MiB", file=sys.stderr)
            unique = unique_content(archives)
    finally:
        for b in builders:
            b.stop()
        mounted = [m.split()[1] for m in Path("/proc/self/mounts").read_text().splitlines()
                   if m.split()[1].startswith(str(tmp) + "/")]
        if not mounted:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"left {tmp}: still mounted under it: {mounted[:3]}", file=sys.stderr)
    result = {"machine": machine(), "repeat": args.repeat, "date": time.strftime("%Y-%m-%d"),
              "lamina_peak_rss_kib": {s: max(v) for s, v in rss.items() if v}, "scenarios": {},
              "disk_bytes": disk, "unique_content_bytes": unique}
    header = (f"{'scenario':<22}" + "".join(f"{b.name[:14]:>15}" for b in builders)
              + f"{'lamina/best':>13}")
    lines = [header]
    for s in scenarios:
        med = {name: statistics.median(v) for name, v in times[s].items() if v}
        best = min((v for name, v in med.items() if not name.startswith("lamina")), default=None)
        ratio = med["lamina"] / best if best and "lamina" in med else None
        result["scenarios"][s] = {"median_s": med, "runs_s": times[s], "lamina_over_best": ratio}
        lines.append(f"{s:<22}" + "".join(f"{med[b.name]:>15.2f}" if b.name in med else f"{'-':>15}"
                                          for b in builders)
                     + (f"{ratio:>13.2f}" if ratio else f"{'-':>13}"))
    print(f"median of {args.repeat} (seconds), {result['machine']}")
    print("\n".join(lines))
    for s, v in result["lamina_peak_rss_kib"].items():
        print(f"lamina peak RSS ({s}, whole process tree): {v / 1024:.0f} MiB")
    if disk and unique:
        print(f"store disk use, base + workload image + a variant (unique content "
              f"{unique / 2**20:.0f} MiB): " + ", ".join(
                  f"{name} {n / 2**20:.0f} MiB ({n / unique:.2f}x)" for name, n in disk.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
