"""Helpers for the `lamina build` integration tests (tests/builder/test_build_*.py).

- `make_context(dir, dockerfile, files)`: a build context directory: a Dockerfile and
  files given as {relative path: str | bytes | (content, mode)}.
- `build(root, ctx, *args)`: `lamina --root ROOT build --progress plain ARGS CTX`, run
  in-process through `builder.cli.main` (fast) with stdout/stderr captured; returns a
  `BuildRun` (exit code, stdout, stderr, the image ID printed, the plain progress parsed
  into per-step records).
- `lamina(root, *args)`: any other `lamina` command, in-process.
- `build_rootfs(root, ctx, dest, *args)`: a build with `--output type=local,dest=DEST`.
- `make_base(root, workdir)`: builds the shared busybox base image `bb` into a store from
  the host's static busybox (FROM scratch; COPY busybox; RUN --install; /etc/passwd and
  /etc/group with users alice (1000) and bob (1001), groups staff (50), wheel (10)).
- `image_config(root, ref)`: the stored OCI config of an image (dict).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """root:x:0:
daemon:x:1:
wheel:x:10:alice
staff:x:50:alice,bob
alice:x:1000:
bob:x:1001:
nogroup:x:65534:
"""

BASE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY etc/ /etc/
RUN mkdir -p /home/alice /home/bob /root /tmp && chown 1000:1000 /home/alice \\
    && chown 1001:1001 /home/bob && chmod 1777 /tmp && chmod 700 /root
"""

BASE_REF = "bb"

STEP_LINE = re.compile(r"^#(\d+) (.*)$")


def busybox_binary() -> str:
    path = "/bin/busybox" if os.path.exists("/bin/busybox") else shutil.which("busybox")
    assert path, "busybox-static is needed"
    return path


def make_context(directory: Path, dockerfile: str | None, files: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if dockerfile is not None:
        (directory / "Dockerfile").write_text(dockerfile)
    for rel, content in (files or {}).items():
        mode = None
        if isinstance(content, tuple):
            content, mode = content
        p = directory / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        if mode is not None:
            p.chmod(mode)
    return directory


@dataclass
class StepRecord:
    """One `#N` step of the plain progress output."""

    number: int
    title: str = ""
    cached: bool = False
    miss: str | None = None
    done: bool = False
    error: str | None = None
    output: list[str] = field(default_factory=list)


@dataclass
class BuildRun:
    code: int
    stdout: str
    stderr: str

    @property
    def image_id(self) -> str:
        lines = [l for l in self.stdout.splitlines() if l.startswith("sha256:")]
        assert lines, f"no image ID printed\nstdout:{self.stdout}\nstderr:{self.stderr}"
        return lines[-1].strip()

    @property
    def steps(self) -> list[StepRecord]:
        """The plain progress, step by step (in first-seen order)."""
        records: dict[int, StepRecord] = {}
        for line in self.stderr.splitlines():
            m = STEP_LINE.match(line)
            if not m:
                continue
            n, rest = int(m.group(1)), m.group(2)
            rec = records.get(n)
            if rec is None:
                rec = records[n] = StepRecord(n, title=rest)
                continue
            if rest == "CACHED":
                rec.cached = True
            elif rest.startswith("cache miss: "):
                rec.miss = rest[len("cache miss: "):]
            elif re.fullmatch(r"DONE \d+\.\ds", rest):
                rec.done = True
            elif rest.startswith("ERROR: "):
                rec.error = rest[len("ERROR: "):]
            else:
                out = re.match(r"^\d+\.\d{3} (.*)$", rest)
                rec.output.append(out.group(1) if out else rest)
        return list(records.values())

    def step(self, text: str) -> StepRecord:
        """The one step whose title contains `text`."""
        found = [s for s in self.steps if text in s.title]
        assert len(found) == 1, f"{len(found)} steps match {text!r}:\n{self.stderr}"
        return found[0]

    def check(self) -> "BuildRun":
        assert self.code == 0, f"build failed ({self.code})\nstdout:{self.stdout}\nstderr:{self.stderr}"
        return self


def lamina(root: Path, *args: str) -> BuildRun:
    """Run `lamina --root ROOT ARGS` in-process; never raises for a failing command."""
    from lamina.builder.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--root", str(root), *[str(a) for a in args]])
        except SystemExit as e:  # pragma: no cover - main() should not exit
            code = e.code if isinstance(e.code, int) else 1
    return BuildRun(code, out.getvalue(), err.getvalue())


def build(root: Path, ctx: Path, *args: str, progress: str = "plain") -> BuildRun:
    return lamina(root, "build", "--progress", progress, *args, str(ctx))


def build_rootfs(root: Path, ctx: Path, dest: Path, *args: str) -> BuildRun:
    if dest.exists():
        shutil.rmtree(dest)
    return build(root, ctx, "--output", f"type=local,dest={dest}", *args).check()


def make_base(root: Path, workdir: Path, ref: str = BASE_REF) -> str:
    """Build the busybox base image into the store at `root`; its image ID."""
    ctx = make_context(workdir, BASE_DOCKERFILE, {"etc/passwd": PASSWD, "etc/group": GROUP})
    shutil.copy2(busybox_binary(), ctx / "busybox")
    return build(root, ctx, "-t", ref).check().image_id


def image_config(root: Path, ref: str) -> dict:
    from lamina.store.store import Store

    with Store(root) as store:
        return json.loads(json.dumps(store.resolve(ref).config))


def has_image(root: Path, ref: str) -> bool:
    from lamina.store.errors import ImageNotFound
    from lamina.store.store import Store

    with Store(root) as store:
        try:
            store.resolve(ref)
            return True
        except ImageNotFound:
            return False


def mode_of(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def owner_of(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def store_mounts(root: Path) -> list[str]:
    """Mount points under the store root, from /proc/self/mounts."""
    prefix = os.path.realpath(root)
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def procs_with_cmdline(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd:
            found.append(int(entry))
    return found


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def lamina_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lamina", "--root", str(root), *[str(a) for a in args]]
