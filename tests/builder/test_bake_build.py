"""`lamina bake` building for real: a Compose project and bake files (HCL, JSON) on
one store, compared with separate `lamina build` runs of the same targets (the
peer here is lamina's own single-image build, whose image IDs the bake must
reproduce exactly), parallel targets overlapping in time, failures and --fail-fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.builder.buildkit import build, has_image, image_config, lamina, make_base, make_context

pytestmark = pytest.mark.root

SHARED_DOCKERFILE = """\
FROM bb AS base
RUN echo base > /base && mkdir /shared
FROM base AS api
ARG WHO=nobody
RUN echo "api $WHO" > /shared/api
ENV ROLE=api
FROM base AS web
RUN echo web > /shared/web
ENV ROLE=web
"""

SOLO_DOCKERFILE = """\
FROM bb
COPY hello.txt /hello.txt
RUN wc -c /hello.txt > /size
"""

COMPOSE = """\
services:
  api:
    image: proj/api:${TAG:-1}
    build:
      context: app
      target: api
      args:
        - WHO=${WHO}
  web:
    image: proj/web:1
    build:
      context: app
      target: web
  solo:
    image: proj/solo:1
    build: ./solo
  cache:
    image: redis:7
"""


@pytest.fixture()
def project(tmp_path):
    top = tmp_path / "proj"
    make_context(top / "app", SHARED_DOCKERFILE)
    make_context(top / "solo", SOLO_DOCKERFILE, {"hello.txt": "hello\n"})
    (top / "compose.yaml").write_text(COMPOSE)
    (top / ".env").write_text("WHO=dotenv\n")
    return top


def fresh_store(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    make_base(root, tmp_path / f"{name}-base")
    return root


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One store with `bb` for the tests that need no fresh cache (tags differ)."""
    top = tmp_path_factory.mktemp("bake-store")
    return fresh_store(top, "store")


def bake(root: Path, *args: str):
    return lamina(root, "bake", *args)


def _missed_steps(stderr: str) -> list[tuple[str, str]]:
    """(target label, step title) of every step that ran (a cache miss)."""
    titles: dict[tuple[str, str], str] = {}
    missed = []
    for line in stderr.splitlines():
        m = re.match(r"^\[(\S+)\] #(\d+) (.*)$", line)
        if not m:
            continue
        key = (m.group(1), m.group(2))
        if key not in titles:
            titles[key] = m.group(3)
        elif m.group(3).startswith("cache miss"):
            missed.append((m.group(1), titles[key]))
    return missed


def image_ids(stdout: str) -> dict[str, str]:
    return dict(line.split() for line in stdout.splitlines() if " sha256:" in line)


def test_compose_project_equals_separate_builds(tmp_path, project, monkeypatch):
    monkeypatch.delenv("TAG", raising=False)
    monkeypatch.delenv("WHO", raising=False)
    baked_root = fresh_store(tmp_path, "baked")
    run = bake(baked_root, "-f", str(project / "compose.yaml"))
    assert run.code == 0, run.stderr
    baked = image_ids(run.stdout)
    assert set(baked) == {"api", "web", "solo"}  # `cache` has no build: section

    # the same three images, built one by one into another store
    single_root = fresh_store(tmp_path, "single")
    separate = {
        "api": build(single_root, project / "app", "--target", "api", "--build-arg", "WHO=dotenv",
                     "-t", "proj/api:1").check().image_id,
        "web": build(single_root, project / "app", "--target", "web", "-t", "proj/web:1").check().image_id,
        "solo": build(single_root, project / "solo", "-t", "proj/solo:1").check().image_id,
    }
    assert baked == separate
    for ref in ("proj/api:1", "proj/web:1", "proj/solo:1"):
        assert has_image(baked_root, ref)
    assert "ROLE=api" in image_config(baked_root, "proj/api:1")["config"]["Env"]

    # the stage api and web share ran once, before them (as BuildKit solves it once)
    missed = _missed_steps(run.stderr)
    assert [label for label, title in missed if "RUN echo base" in title] == ["api+web"], missed
    assert sorted(label for label, _ in missed) == ["api", "api+web", "solo", "solo", "web"]
    # every line of the progress view is labelled by its target
    lines = [l for l in run.stderr.splitlines() if l.startswith("#")]
    assert not lines, lines[:3]
    assert any(l.startswith("[api] #") and "RUN echo \"api $WHO\"" in l for l in run.stderr.splitlines())
    assert re.search(r"^bake: 3 of 3 target\(s\) built$", run.stderr, re.M)

    # a second bake: one shared cache, nothing runs, same images
    again = bake(baked_root, "-f", str(project / "compose.yaml"))
    assert again.code == 0, again.stderr
    assert image_ids(again.stdout) == baked
    assert "cache miss" not in again.stderr
    assert again.stderr.count(" CACHED") >= 5


TIMED = """\
FROM bb
RUN echo {name} > /name && cat /proc/uptime && sleep 2 && cat /proc/uptime
"""


def _intervals(stderr: str) -> dict[str, tuple[float, float]]:
    """Each target's (first, last) /proc/uptime printed by its RUN step."""
    seen: dict[str, list[float]] = {}
    for line in stderr.splitlines():
        m = re.match(r"^\[(\w+)\] #\d+ \d+\.\d{3} (\d+\.\d+) \d+\.\d+$", line)
        if m:
            seen.setdefault(m.group(1), []).append(float(m.group(2)))
    return {name: (min(v), max(v)) for name, v in seen.items() if len(v) == 2}


def test_independent_targets_overlap_in_time_and_jobs_bounds_them(shared_root, tmp_path):
    root = shared_root
    for name in ("one", "two"):
        make_context(tmp_path / name, TIMED.format(name=name))
    hcl = tmp_path / "docker-bake.hcl"
    hcl.write_text(f'group "default" {{\n  targets = ["one", "two"]\n}}\n'
                   f'target "one" {{\n  context = "{tmp_path / "one"}"\n}}\n'
                   f'target "two" {{\n  context = "{tmp_path / "two"}"\n}}\n')
    run = bake(root, "-f", str(hcl), "--jobs", "2")
    assert run.code == 0, run.stderr
    spans = _intervals(run.stderr)
    assert set(spans) == {"one", "two"}, run.stderr
    (a0, a1), (b0, b1) = spans["one"], spans["two"]
    assert a0 < b1 and b0 < a1, f"the two RUN steps did not overlap: {spans}"

    # --jobs 1: one after the other
    serial = bake(root, "-f", str(hcl), "--jobs", "1", "--no-cache")
    assert serial.code == 0, serial.stderr
    spans = _intervals(serial.stderr)
    (a0, a1), (b0, b1) = spans["one"], spans["two"]
    assert a1 <= b0 or b1 <= a0, f"--jobs 1 ran targets at once: {spans}"


BAKE_HCL = """\
variable "TAG" {
  default = "dev"
}
variable "GREETING" {
  default = "hello"
}
group "default" {
  targets = ["app", "tools"]
}
group "tools" {
  targets = ["inline"]
}
target "_common" {
  context = "%(ctx)s"
  args = {
    GREETING = "${GREETING}"
  }
  labels = {
    "org.example.tag" = "${TAG}"
  }
}
target "app" {
  inherits = ["_common"]
  tags     = ["bake/app:${TAG}"]
}
target "inline" {
  inherits = ["_common"]
  tags     = ["bake/inline:${TAG}"]
  dockerfile-inline = <<EOT
FROM bb
ARG GREETING
RUN echo "inline $GREETING" > /inline
EOT
}
"""

APP_DOCKERFILE = """\
FROM bb
ARG GREETING=unset
ENV GREETING=$GREETING
LABEL org.example.fromfile=yes
RUN echo "$GREETING" > /greeting
"""


def test_bakefile_hcl_and_json_build_the_same_images(shared_root, tmp_path, monkeypatch):
    root = shared_root
    ctx = make_context(tmp_path / "ctx", APP_DOCKERFILE)
    hcl = tmp_path / "docker-bake.hcl"
    hcl.write_text(BAKE_HCL % {"ctx": ctx})
    monkeypatch.setenv("TAG", "v2")          # a variable from the environment
    monkeypatch.delenv("GREETING", raising=False)
    run = bake(root, "-f", str(hcl), "--set", "app.args.GREETING=bonjour")
    assert run.code == 0, run.stderr
    ids = image_ids(run.stdout)
    assert set(ids) == {"app", "inline"}
    app = image_config(root, "bake/app:v2")
    assert "GREETING=bonjour" in app["config"]["Env"]            # --set beats the file
    assert app["config"]["Labels"] == {"org.example.fromfile": "yes", "org.example.tag": "v2"}
    inline = image_config(root, "bake/inline:v2")
    assert inline["config"]["Labels"] == {"org.example.tag": "v2"}
    assert ids["app"] == "sha256:" + _config_digest(root, "bake/app:v2")

    # each target is what `lamina build` makes of the same inputs: the same image ID
    separate = build(root, ctx, "--build-arg", "GREETING=bonjour",
                     "--label", "org.example.tag=v2").check().image_id
    assert separate == ids["app"]
    inline_file = tmp_path / "inline.Dockerfile"
    inline_file.write_text('FROM bb\nARG GREETING\nRUN echo "inline $GREETING" > /inline\n')
    separate = build(root, ctx, "-f", str(inline_file), "--build-arg", "GREETING=hello",
                     "--label", "org.example.tag=v2").check().image_id
    assert separate == ids["inline"]

    # the JSON form of the same definition builds the same images (all cached)
    js = tmp_path / "docker-bake.json"
    js.write_text(json.dumps({
        "variable": {"TAG": {"default": "dev"}, "GREETING": {"default": "hello"}},
        "group": {"default": {"targets": ["app", "tools"]}, "tools": {"targets": ["inline"]}},
        "target": {
            "_common": {"context": str(ctx), "args": {"GREETING": "${GREETING}"},
                        "labels": {"org.example.tag": "${TAG}"}},
            "app": {"inherits": ["_common"], "tags": ["bake/app:${TAG}"]},
            "inline": {"inherits": ["_common"], "tags": ["bake/inline:${TAG}"],
                       "dockerfile-inline": "FROM bb\nARG GREETING\nRUN echo \"inline $GREETING\" > /inline\n"},
        },
    }))
    again = bake(root, "-f", str(js), "--set", "app.args.GREETING=bonjour")
    assert again.code == 0, again.stderr
    assert image_ids(again.stdout) == ids
    assert "cache miss" not in again.stderr

    # only the group asked for
    tools = bake(root, "-f", str(js), "tools")
    assert tools.code == 0 and set(image_ids(tools.stdout)) == {"inline"}


# Go's GOARCH names of the machines lamina runs on (the OCI platform's architecture)
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}

INLINE_TEXT = "FROM bb\nRUN echo made-inline > /made\nENV FROM=inline\n"


def test_compose_dockerfile_inline_and_the_hosts_platform(shared_root, tmp_path):
    """Compose `build.dockerfile_inline` builds that text (the same image as `lamina
    build -f` of a file holding it); `build.platforms` naming the host's platform is
    accepted (the image is the host's: its config says so)."""
    import os

    import yaml

    root = shared_root
    host = f"linux/{GOARCH[os.uname().machine]}"
    ctx = make_context(tmp_path / "proj" / "ctx", "FROM bb\nRUN echo from-file > /made\n")
    (tmp_path / "proj" / "compose.yaml").write_text(yaml.safe_dump({"services": {
        "inl": {"image": "compose/inline:1",
                "build": {"context": "ctx", "dockerfile_inline": INLINE_TEXT}},
        "plat": {"image": "compose/plat:1",
                 "build": {"context": "ctx", "platforms": [host]}},
    }}))
    run = bake(root, "-f", str(tmp_path / "proj" / "compose.yaml"))
    assert run.code == 0, run.stderr
    ids = image_ids(run.stdout)
    inline_file = tmp_path / "inline.Dockerfile"
    inline_file.write_text(INLINE_TEXT)
    assert ids["inl"] == build(root, ctx, "-f", str(inline_file)).check().image_id
    assert ids["plat"] == build(root, ctx).check().image_id
    plat = image_config(root, "compose/plat:1")
    assert f"{plat['os']}/{plat['architecture']}" == host
    assert image_config(root, "compose/inline:1")["config"]["Env"][-1] == "FROM=inline"


LABELLED_DOCKERFILE = """\
FROM bb
LABEL keep=dockerfile over=dockerfile
RUN echo labelled > /labelled
LABEL late=dockerfile
"""


def test_build_label_sets_the_final_config_over_dockerfile_labels(shared_root, tmp_path):
    """`docker build --label K=V` (BuildKit: the frontend's `label:K` attributes, set on
    the target's config after every instruction: over a Dockerfile LABEL of the same
    key; repeatable, the last of a key wins; a bare K is K=""; no history entry, no
    layer, no step re-run). The provenance records them (`label:K`), so `verify`
    rebuilds the labelled image."""
    root = shared_root
    ctx = make_context(tmp_path / "ctx", LABELLED_DOCKERFILE)
    plain = build(root, ctx).check()
    labelled = build(root, ctx, "-t", "labelled:1", "--label", "over=flag", "--label", "new=1",
                     "--label", "new=2", "--label", "bare", "--label", "with=an=equals").check()
    assert [s.title for s in labelled.steps if s.miss] == []     # labels change no step
    got, base = image_config(root, "labelled:1"), image_config(root, plain.image_id)
    assert got["config"]["Labels"] == {"keep": "dockerfile", "over": "flag", "late": "dockerfile",
                                       "new": "2", "bare": "", "with": "an=equals"}
    assert got["history"] == base["history"] and got["rootfs"] == base["rootfs"]
    rest = {k: v for k, v in got["config"].items() if k != "Labels"}
    assert rest == {k: v for k, v in base["config"].items() if k != "Labels"}
    assert labelled.image_id != plain.image_id
    # no Dockerfile LABEL at all: the map is made
    bare = make_context(tmp_path / "bare", "FROM scratch\nENV A=1\n")
    assert image_config(root, build(root, bare, "--label", "only=me").check().image_id)[
        "config"]["Labels"] == {"only": "me"}
    bad = build(root, ctx, "--label", "=v")
    assert bad.code != 0 and "invalid --label" in bad.stderr and "Traceback" not in bad.stderr
    # the provenance names the labels; verify rebuilds the same image from it
    result = lamina(root, "verify", "labelled:1", str(ctx))
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("verified: labelled:1 rebuilds identically")


def _config_digest(root: Path, ref: str) -> str:
    from lamina.store.store import Store

    with Store(root) as store:
        return store.resolve(ref).config_digest.removeprefix("sha256:")


FAILING = """\
services:
  bad:
    build:
      context: bad
  good:
    image: fail/good:1
    build:
      context: good
"""


def test_failure_summary_and_fail_fast(shared_root, tmp_path):
    root = shared_root
    make_context(tmp_path / "bad", "FROM bb\nRUN echo breaking && exit 3\n")
    make_context(tmp_path / "good", "FROM bb\nRUN echo fine > /fine\n")
    (tmp_path / "compose.yaml").write_text(FAILING)
    compose = str(tmp_path / "compose.yaml")

    run = bake(root, "-f", compose)
    assert run.code == 1
    assert has_image(root, "fail/good:1")        # a failure stops nothing else
    assert re.search(r"^bake: 1 of 2 target\(s\) built$", run.stderr, re.M), run.stderr
    bad = [l for l in run.stderr.splitlines() if l.startswith("  bad ")]
    assert bad and "failed" in bad[0] and "exit code: 3" in bad[0], run.stderr
    assert "[bad] breaking" in run.stderr or re.search(r"^\[bad\] #\d+ [\d.]+ breaking$",
                                                       run.stderr, re.M)

    # --fail-fast, one job, the failing target first: the other never starts
    lamina(root, "rmi", "fail/good:1").check()
    ff = bake(root, "-f", compose, "--fail-fast", "--jobs", "1", "bad", "good")
    assert ff.code == 1
    assert re.search(r"^  good\s+canceled\s+not started \(--fail-fast\)$", ff.stderr, re.M), ff.stderr
    assert not has_image(root, "fail/good:1")


def test_compose_secret_reaches_the_run_step(shared_root, tmp_path):
    root = shared_root
    make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=secret,id=token cp /run/secrets/token /copied\n")
    (tmp_path / "token.txt").write_text("s3cret\n")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  app:\n    image: sec/app:1\n    build:\n      context: ctx\n"
        "      secrets: [token]\nsecrets:\n  token:\n    file: ./token.txt\n")
    run = bake(root, "-f", str(tmp_path / "compose.yaml"))
    assert run.code == 0, run.stderr
    out = tmp_path / "rootfs"
    lamina(root, "save", "sec/app:1", "-o", str(tmp_path / "img.tar")).check()
    import tarfile
    with tarfile.open(tmp_path / "img.tar") as outer:
        names = outer.getnames()
        found = False
        for name in names:
            member = outer.extractfile(name) if outer.getmember(name).isfile() else None
            if member is None:
                continue
            try:
                with tarfile.open(fileobj=member) as layer:
                    if "copied" in layer.getnames():
                        found = layer.extractfile("copied").read() == b"s3cret\n"
            except tarfile.TarError:
                continue
    assert found, names
    assert not out.exists()


ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])


def _pushed_config(host: str, repo: str, tag: str) -> str:
    """The config digest of the image a tag names (through an index: its image
    manifest, not an attestation)."""
    import httpx

    manifest = httpx.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}).json()
    if "manifests" in manifest:
        (image,) = [m for m in manifest["manifests"]
                    if (m.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"]
        manifest = httpx.get(f"http://{host}/v2/{repo}/manifests/{image['digest']}",
                             headers={"Accept": ACCEPT}).json()
    return manifest["config"]["digest"]


def test_push_and_cache_export(shared_root, tmp_path):
    """`--push` pushes every target (the labelled one too, pushed after labelling);
    compose's cache_to/cache_from reach the build (a local cache, read back by a
    cold store)."""
    import httpx

    from tests.store.registryfix import registry

    make_context(tmp_path / "plain", "FROM bb\nRUN echo plain > /plain\n")
    make_context(tmp_path / "labelled", "FROM bb\nRUN echo labelled > /labelled\n")
    cache = tmp_path / "cache"
    with registry(tmp_path / "registry") as host:
        (tmp_path / "compose.yaml").write_text(f"""\
services:
  plain:
    image: {host}/bake/plain:1
    build:
      context: plain
      cache_to: ["type=local,dest={cache}"]
  labelled:
    image: {host}/bake/labelled:1
    build:
      context: labelled
      labels: {{stage: pushed}}
""")
        run = bake(shared_root, "-f", str(tmp_path / "compose.yaml"), "--push")
        assert run.code == 0, run.stderr
        ids = image_ids(run.stdout)
        for name in ("plain", "labelled"):
            tags = httpx.get(f"http://{host}/v2/bake/{name}/tags/list").json()
            assert tags["tags"] == ["1"], tags
            assert _pushed_config(host, f"bake/{name}", "1") == ids[name]
    assert (cache / "index.json").is_file()

    cold = fresh_store(tmp_path, "cold")
    (tmp_path / "compose-from.yaml").write_text(
        f"services:\n  plain:\n    build:\n      context: plain\n      cache_from: [\"type=local,src={cache}\"]\n")
    again = bake(cold, "-f", str(tmp_path / "compose-from.yaml"))
    assert again.code == 0, again.stderr
    assert "cache miss" not in again.stderr
    assert image_ids(again.stdout)["plain"] == ids["plain"]


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_killed_bake_stops_every_target_build(shared_root, tmp_path, how):
    """SIGKILL of lamina bake alone: its target builds get SIGTERM (they die with
    it) and stop their steps; Ctrl-C: the whole group stops, exit 130. No step
    process, no mount under the store, nothing tagged."""
    import os
    import signal
    import subprocess
    import time

    from tests.builder.buildkit import lamina_argv, procs_with_cmdline, python_env, store_mounts

    marks = {"sigkill": ("2101", "2102"), "ctrl-c": ("2201", "2202")}[how]
    for name, mark in zip(("first", "second"), marks):
        make_context(tmp_path / name, f"FROM bb\nRUN echo started && sleep {mark}\n")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  first:\n    image: kill/first:1\n    build: ./first\n"
        "  second:\n    image: kill/second:1\n    build: ./second\n")
    needles = [f"sleep\x00{m}".encode() for m in marks]

    def running(needle: bytes) -> bool:
        return bool(procs_with_cmdline(needle))

    def wait_for(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    proc = subprocess.Popen(lamina_argv(shared_root, "bake", "-f", str(tmp_path / "compose.yaml"),
                                        "--jobs", "2"),
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: all(running(n) for n in needles), 60, "both targets' RUN steps")
        children = procs_with_cmdline(b"lamina.builder.bake.child")
        assert len(children) >= 2
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (-signal.SIGKILL if how == "sigkill" else 130)
    wait_for(lambda: not any(running(n) for n in needles), 15, "the RUN steps to stop")
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 15,
             "the target builds to exit")
    assert store_mounts(shared_root) == []
    assert not has_image(shared_root, "kill/first:1") and not has_image(shared_root, "kill/second:1")
