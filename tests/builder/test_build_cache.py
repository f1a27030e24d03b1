"""The build cache and the build's outputs, end to end: a rebuild is all CACHED, a
changed file re-runs exactly the steps from the COPY that reads it (and the miss names
the file), a changed --build-arg names the ARG, a LABEL never invalidates a RUN,
--no-cache rebuilds everything, the image ID is reproducible (rebuild, --no-cache, a
fresh store); --iidfile, --output type=oci|docker|tar|local, --progress json."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.builder.buildkit import build, build_rootfs, image_config, lamina, make_base, make_context
from tests.conftest import require_tool

pytestmark = pytest.mark.root

APP = """\
FROM bb
ARG FLAVOR=plain
RUN echo "flavor $FLAVOR" > /flavor
COPY config.txt /etc/app/config.txt
RUN cat /etc/app/config.txt > /derived
COPY src/ /src/
LABEL version=1
RUN ls /src > /listing
"""

FILES = {"config.txt": "setting=1\n", "src/a.py": "print('a')\n", "src/b.py": "print('b')\n"}


@pytest.fixture(scope="module")
def cache_store(tmp_path_factory):
    """A store of its own (so that first builds are misses), with the base image."""
    base = tmp_path_factory.mktemp("cache-store")
    root = base / "store"
    base_id = make_base(root, base / "base-ctx")
    return root, base_id


@pytest.fixture(scope="module")
def first(cache_store, tmp_path_factory):
    """The app built once: (context, the run, the image ID)."""
    root, _ = cache_store
    ctx = make_context(tmp_path_factory.mktemp("app") / "ctx", APP, FILES)
    run = build(root, ctx, "-t", "app:1").check()
    return ctx, run


def _states(run) -> list[str]:
    return ["cached" if s.cached else ("ran" if s.done else "?") for s in run.steps]


def test_first_build_misses_then_rebuild_is_all_cached(cache_store, first):
    root, _ = cache_store
    ctx, run1 = first
    assert _states(run1) == ["ran"] * 5
    assert all(s.miss == "not built before" for s in run1.steps)
    run2 = build(root, ctx, "-t", "app:1").check()
    assert _states(run2) == ["cached"] * 5
    assert run2.image_id == run1.image_id


def test_changed_file_reruns_from_its_copy_and_names_it(cache_store, first, tmp_path):
    root, _ = cache_store
    ctx, run1 = first
    changed = make_context(tmp_path / "ctx", APP, {**FILES, "src/b.py": "print('B')\n"})
    # a changed path: the explanation is keyed by the Dockerfile's path, so build the
    # original context's Dockerfile against the changed context (-f)
    run = build(root, changed, "-f", str(ctx / "Dockerfile")).check()
    assert _states(run) == ["cached", "cached", "cached", "ran", "ran"]
    miss = run.step("COPY src/ /src/").miss
    assert "b.py" in miss and "a.py" not in miss
    assert run.step("RUN ls /src").miss == "previous step changed"
    assert run.image_id != run1.image_id


def test_only_mtime_changed_is_still_cached(cache_store, first):
    root, _ = cache_store
    ctx, run1 = first
    import os
    os.utime(ctx / "config.txt", (1, 1))
    run = build(root, ctx).check()
    assert _states(run) == ["cached"] * 5
    assert run.image_id == run1.image_id


def test_build_arg_change_names_the_arg(cache_store, first):
    root, _ = cache_store
    ctx, _ = first
    run = build(root, ctx, "--build-arg", "FLAVOR=spicy").check()
    assert _states(run) == ["ran"] * 5  # every RUN sees the ARG; the chain re-runs
    miss = run.step('echo "flavor').miss
    assert "FLAVOR" in miss and "spicy" in miss


def test_label_change_does_not_invalidate_following_run(cache_store, first, tmp_path):
    root, _ = cache_store
    ctx, run1 = first
    relabelled = make_context(tmp_path / "ctx", APP.replace("LABEL version=1", "LABEL version=2"),
                              FILES)
    run = build(root, relabelled, "-t", "app:relabelled").check()
    assert _states(run) == ["cached"] * 5
    assert image_config(root, "app:relabelled")["config"]["Labels"] == {"version": "2"}
    assert run.image_id != run1.image_id


def test_no_cache_rebuilds_everything_to_the_same_image(cache_store, first, tmp_path):
    root, _ = cache_store
    ctx, run1 = first
    iid = tmp_path / "iid"
    run = build(root, ctx, "--no-cache", "--iidfile", str(iid)).check()
    assert _states(run) == ["ran"] * 5
    assert all(s.miss == "--no-cache" for s in run.steps)
    assert run.image_id == run1.image_id  # reproducible
    assert iid.read_text() == run1.image_id  # docker writes the ID without a newline


def test_fresh_store_gives_the_same_digest(cache_store, first, tmp_path):
    root, base_id = cache_store
    ctx, run1 = first
    fresh = tmp_path / "fresh-store"
    assert make_base(fresh, tmp_path / "base-ctx") == base_id
    run = build(fresh, ctx).check()
    assert _states(run) == ["ran"] * 5
    assert run.image_id == run1.image_id


def test_source_date_epoch_sets_created(cache_store, first, monkeypatch):
    root, _ = cache_store
    ctx, run1 = first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    run = build(root, ctx, "-t", "app:epoch").check()
    cfg = image_config(root, "app:epoch")
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in cfg["history"][4:]} == {"2023-11-14T22:13:20Z"}
    assert run.image_id != run1.image_id


def test_cache_mount_and_bind_content_in_key(cache_store, tmp_path):
    """A RUN --mount=type=bind reads context files: their content is in its key."""
    root, _ = cache_store
    df = "FROM bb\nRUN --mount=type=bind,source=in.txt,target=/in.txt cat /in.txt > /out\n"
    ctx = make_context(tmp_path / "ctx", df, {"in.txt": "v1\n"})
    build(root, ctx).check()
    assert _states(build(root, ctx).check()) == ["cached"]
    (ctx / "in.txt").write_text("v2\n")
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, ctx, rootfs)
    assert _states(run) == ["ran"] and "in.txt" in run.steps[0].miss
    assert (rootfs / "out").read_text() == "v2\n"


# --- outputs and progress -------------------------------------------------------------------

def test_outputs(cache_store, first, tmp_path):
    root, _ = cache_store
    ctx, run1 = first
    oci, docker, tar, local = (tmp_path / n for n in ("img.oci.tar", "img.docker.tar",
                                                      "rootfs.tar", "rootfs"))
    run = build(root, ctx, "-t", "app:out",
                "--output", f"type=oci,dest={oci}", "--output", f"type=docker,dest={docker}",
                "--output", f"type=tar,dest={tar}", "--output", f"type=local,dest={local}").check()
    assert run.image_id == run1.image_id
    with tarfile.open(oci) as tf:
        names = set(tf.getnames())
        assert {"oci-layout", "index.json"} <= names
        layout = json.load(tf.extractfile("oci-layout"))
        assert layout == {"imageLayoutVersion": "1.0.0"}
        index = json.load(tf.extractfile("index.json"))
        names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                 for m in index["manifests"]]
        assert names and all(n and n.endswith("out") for n in names), index
    with tarfile.open(docker) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert len(manifest) == 1 and len(manifest[0]["Layers"]) == 9
        assert run1.image_id.split(":")[1] in manifest[0]["Config"]
        # named by -t, as buildx names the exporter's image (familiar or full form)
        assert manifest[0]["RepoTags"] in (["app:out"], ["docker.io/library/app:out"])
    with tarfile.open(tar) as tf:
        members = {m.name.rstrip("/"): m for m in tf.getmembers()}
        assert members["flavor"].isfile() and members["bin/busybox"].isfile()
        assert tf.extractfile(members["derived"]).read() == b"setting=1\n"
        assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert (local / "derived").read_text() == "setting=1\n"
    assert (local / "listing").read_text() == "a.py\nb.py\n"
    assert (local / "bin" / "sh").readlink() == Path("/bin/busybox")
    # oracles read what we wrote
    skopeo = require_tool("skopeo")
    for transport, path in (("oci-archive", oci), ("docker-archive", docker)):
        out = subprocess.run([skopeo, "inspect", "--config", f"{transport}:{path}"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        cfg = json.loads(out.stdout)
        assert cfg["rootfs"]["diff_ids"] == image_config(root, "app:1")["rootfs"]["diff_ids"]


def test_progress_json_events(cache_store, tmp_path):
    root, _ = cache_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo json-line-1; echo json-line-2\n"
                                         "COPY f /f\n", {"f": "x"})
    run = build(root, ctx, progress="json").check()
    events = [json.loads(line) for line in run.stderr.splitlines() if line.strip()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("done") == 2
    outputs = [e["line"] for e in events if e["event"] == "output"]
    assert outputs == ["json-line-1", "json-line-2"]
    assert events[-1]["image"] == run.image_id
    for e in events:
        if "step" in e:
            assert e["instruction"] and isinstance(e["step"], int)
    again = build(root, ctx, progress="json").check()
    kinds2 = [json.loads(l)["event"] for l in again.stderr.splitlines()]
    assert kinds2.count("cached") == 2 and "started" not in kinds2


def test_progress_plain_streams_output_lines(cache_store, tmp_path):
    root, _ = cache_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo plain-1 && echo plain-2 >&2\n")
    run = build(root, ctx).check()
    assert run.steps[0].output == ["plain-1", "plain-2"]


def test_concurrent_builds_share_the_store_and_cache(cache_store, tmp_path):
    from tests.builder.buildkit import lamina_argv, python_env

    root, _ = cache_store
    df = "FROM bb\nRUN echo shared > /s && sleep 0.5\nCOPY f /f\nRUN cat /f /s > /both\n"
    ctxs = [make_context(tmp_path / f"ctx{i}", df, {"f": "same\n"}) for i in range(2)]
    procs = [subprocess.Popen(lamina_argv(root, "build", "--progress", "plain", "-t", f"conc:{i}",
                                          str(c)),
                              env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i, c in enumerate(ctxs)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1  # same inputs, same image, whoever built which step
    again = build(root, ctxs[0]).check()
    assert _states(again) == ["cached"] * 3
    assert again.image_id in ids
    assert lamina(root, "fsck").code == 0
