"""The remote build cache (`--cache-to` / `--cache-from`, as buildx) against a real
registry on loopback (Debian's docker-registry) and an OCI layout directory.

A build exports its cache; a build in another, empty store with --cache-from gets
every step CACHED and the same image ID — which a rebuild could not give, since a
RUN step writes random bytes. mode=min holds only the final image's steps,
mode=max every stage's; the cold build fetches only the layers the final image
needs; type=inline rides in the pushed image's manifest; a cache that cannot be
reached or read is a WARNING and the build goes on; concurrent writers of one ref
leave a readable cache. Formats are checked with skopeo (a peer OCI tool)."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.builder.buildkit import build, busybox_binary, lamina_argv, make_context, python_env
from tests.conftest import require_tool
from tests.store.registryfix import free_port, registry

pytestmark = pytest.mark.root

MULTI = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS builder
RUN mkdir /out && head -c 64 /dev/urandom > /out/app
RUN head -c 4096 /dev/urandom > /out/junk

FROM base
COPY --from=builder /out/app /app
COPY greeting.txt /greeting.txt
RUN cat /greeting.txt /app > /both && head -c 16 /dev/urandom > /random
"""
FINAL_STEPS = ("COPY busybox", "--install", "COPY --from=builder", "COPY greeting.txt", "cat /greeting.txt")
BUILDER_STEPS = ("mkdir /out", "/out/junk")


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _context(path: Path, dockerfile: str = MULTI, greeting: str = "hello\n") -> Path:
    ctx = make_context(path, dockerfile, {"greeting.txt": greeting})
    (ctx / "busybox").write_bytes(Path(busybox_binary()).read_bytes())
    (ctx / "busybox").chmod(0o755)
    return ctx


def _all_cached(run, titles) -> None:
    for title in titles:
        assert run.step(title).cached, f"{title} not cached:\n{run.stderr}"


def _layer_known(root: Path, diff_id: str) -> bool:
    from lamina.store.store import Store

    with Store(root) as store:
        return store.db.query_one("SELECT 1 FROM layers WHERE diff_id=?", (diff_id,)) is not None


def _diff_ids(root: Path, ref: str) -> list[str]:
    from tests.builder.buildkit import image_config

    return image_config(root, ref)["rootfs"]["diff_ids"]


def _skopeo_raw(ref: str) -> dict:
    skopeo = require_tool("skopeo")
    out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", ref],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _image_manifest(ref: str) -> dict:
    """The image manifest `ref` names (through an index, e.g. one with attestations)."""
    raw = _skopeo_raw(f"docker://{ref}")
    if "manifests" not in raw:
        return raw
    (chosen,) = [m for m in raw["manifests"] if (m.get("platform") or {}).get("os") == "linux"]
    return _skopeo_raw(f"docker://{ref.rsplit(':', 1)[0]}@{chosen['digest']}")


@pytest.fixture(scope="module")
def original(tmp_path_factory, reg):
    """One build that exports a mode=max and a mode=min cache and pushes the image;
    then --target builder in the same store (all cached) for the builder's layers."""
    base = tmp_path_factory.mktemp("orig")
    root, ctx = base / "store", _context(base / "ctx")
    run = build(root, ctx, "-t", f"{reg}/app/img:1", "--push",
                "--cache-to", f"type=registry,ref={reg}/app/cache:max,mode=max",
                "--cache-to", f"type=registry,ref={reg}/app/cache:min",
                "--cache-to", f"type=local,dest={base / 'layout'},mode=max").check()
    assert "WARNING" not in run.stderr, run.stderr
    build(root, ctx, "--target", "builder", "-t", "builder").check()
    return {"root": root, "ctx": ctx, "id": run.image_id, "layout": base / "layout",
            "builder_only": [d for d in _diff_ids(root, "builder")
                             if d not in _diff_ids(root, f"{reg}/app/img:1")]}


def test_cold_build_with_registry_cache_is_all_cached(original, reg, tmp_path):
    cold = tmp_path / "cold"
    run = build(cold, original["ctx"], "--cache-from", f"type=registry,ref={reg}/app/cache:max").check()
    _all_cached(run, FINAL_STEPS + BUILDER_STEPS)
    assert run.image_id == original["id"]  # a rerun of the random RUN would differ
    assert "WARNING" not in run.stderr
    # nothing but the final image's layers was fetched: the builder stage's stay remote
    assert original["builder_only"]
    for diff_id in original["builder_only"]:
        assert not _layer_known(cold, diff_id)
    # the image's layers came as the image holds them (re-stamped for the epoch): no second pass
    assert not list((cold / "cache" / "layer-times").glob("*"))
    # the fetched layers stay in the store: built again, nothing is fetched
    again = build(cold, original["ctx"], "--cache-from", f"{reg}/app/cache:max").check()
    _all_cached(again, FINAL_STEPS + BUILDER_STEPS)
    assert again.image_id == original["id"]
    assert "fetched" not in again.stderr, again.stderr


def test_reexport_of_unfetched_layers_mounts_them_registry_side(original, reg, tmp_path):
    """A cold build that hits everything and exports mode=max to another repository
    of the same registry: the builder stage's layers, never fetched, are mounted
    there (the new cache is whole for a third store), and a local export fetches
    them (the layout alone rebuilds everything cached)."""
    cold = tmp_path / "cold"
    layout = tmp_path / "layout"
    run = build(cold, original["ctx"], "--cache-from", f"{reg}/app/cache:max",
                "--cache-to", f"type=registry,ref={reg}/other/cache:max,mode=max").check()
    assert "WARNING" not in run.stderr, run.stderr
    for diff_id in original["builder_only"]:
        assert not _layer_known(cold, diff_id)
    again = build(tmp_path / "third", original["ctx"], "--cache-from", f"{reg}/other/cache:max").check()
    _all_cached(again, FINAL_STEPS + BUILDER_STEPS)
    assert again.image_id == original["id"]
    to_local = build(tmp_path / "fourth", original["ctx"], "--cache-from", f"{reg}/other/cache:max",
                     "--cache-to", f"type=local,dest={layout},mode=max").check()
    assert "WARNING" not in to_local.stderr, to_local.stderr
    last = build(tmp_path / "fifth", original["ctx"], "--cache-from", f"type=local,src={layout}").check()
    _all_cached(last, FINAL_STEPS + BUILDER_STEPS)
    assert last.image_id == original["id"]


STABLE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY greeting.txt /greeting.txt
"""


def test_image_layers_serve_only_builds_with_their_epoch(reg, tmp_path):
    """The cached layers of the image are stamped with the build's SOURCE_DATE_EPOCH:
    a build with another epoch does not take them, and gets the image a fresh build
    with that epoch gives (the steps' own layers would serve any epoch)."""
    ctx = _context(tmp_path / "ctx", STABLE)
    ref = f"{reg}/epochs/cache:1"
    build(tmp_path / "a", ctx, "--cache-to", f"type=registry,ref={ref}").check()
    same = build(tmp_path / "b", ctx, "--cache-from", ref).check()
    _all_cached(same, ("COPY busybox", "--install", "COPY greeting.txt"))
    other = build(tmp_path / "c", ctx, "--cache-from", ref, "--timestamp", "1000000000").check()
    assert not other.step("COPY greeting.txt").cached, other.stderr
    fresh = build(tmp_path / "d", ctx, "--timestamp", "1000000000").check()
    assert other.image_id == fresh.image_id != same.image_id


def test_image_and_cache_share_blobs(original, reg):
    image = _image_manifest(f"{reg}/app/img:1")
    cache = _skopeo_raw(f"docker://{reg}/app/cache:min")
    assert cache["artifactType"] == "application/vnd.lamina.cache.v1+json"
    assert cache["config"]["mediaType"] == "application/vnd.lamina.cache.config.v1+json"
    cache_layers = {l["digest"] for l in cache["layers"]}
    assert {l["digest"] for l in image["layers"]} <= cache_layers
    records = [l for l in cache["layers"] if l["mediaType"] == "application/vnd.lamina.cache.records.v1+json"]
    assert len(records) == 1


def test_mode_min_holds_only_the_final_image_steps(original, reg, tmp_path):
    ctx = original["ctx"]
    with_min = build(tmp_path / "a", ctx, "--target", "builder",
                     "--cache-from", f"type=registry,ref={reg}/app/cache:min").check()
    _all_cached(with_min, ("COPY busybox", "--install"))  # base: part of the final image
    for title in BUILDER_STEPS:
        assert not with_min.step(title).cached, with_min.stderr
    with_max = build(tmp_path / "b", ctx, "--target", "builder",
                     "--cache-from", f"type=registry,ref={reg}/app/cache:max").check()
    _all_cached(with_max, ("COPY busybox", "--install") + BUILDER_STEPS)


def test_a_cold_miss_is_explained_from_the_cache(original, reg, tmp_path):
    ctx = _context(tmp_path / "ctx", greeting="changed\n")
    run = build(tmp_path / "cold", ctx, "--cache-from", f"{reg}/app/cache:max").check()
    _all_cached(run, ("COPY busybox", "--install", "COPY --from=builder"))
    step = run.step("COPY greeting.txt")
    assert not step.cached and step.miss == "file greeting.txt changed", run.stderr
    assert run.step("cat /greeting.txt").miss == "previous step changed"


def test_local_cache_round_trip(original, tmp_path):
    layout = original["layout"]
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["artifactType"] == "application/vnd.lamina.cache.v1+json"
    manifest = _skopeo_raw(f"oci:{layout}:latest")  # a valid OCI layout for a peer tool
    assert manifest["artifactType"] == "application/vnd.lamina.cache.v1+json"
    for layer in manifest["layers"]:
        assert (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).stat().st_size == layer["size"]
    run = build(tmp_path / "cold", original["ctx"], "--cache-from", f"type=local,src={layout}").check()
    _all_cached(run, FINAL_STEPS + BUILDER_STEPS)
    assert run.image_id == original["id"]


SINGLE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY greeting.txt /greeting.txt
RUN head -c 32 /dev/urandom > /random
"""


def test_inline_cache_rides_in_the_pushed_image(reg, tmp_path):
    ctx = _context(tmp_path / "ctx", SINGLE)
    ref = f"{reg}/inline/app:1"
    first = build(tmp_path / "a", ctx, "-t", ref, "--push", "--cache-to", "type=inline").check()
    manifest = _image_manifest(ref)
    assert "dev.lamina.cache.v1" in manifest.get("annotations", {})
    run = build(tmp_path / "cold", ctx, "--cache-from", f"type=registry,ref={ref}").check()
    _all_cached(run, ("COPY busybox", "--install", "COPY greeting.txt", "/random"))
    assert run.image_id == first.image_id
    assert "WARNING" not in run.stderr


def test_unreachable_cache_is_a_warning(tmp_path):
    ctx = _context(tmp_path / "ctx", SINGLE)
    nowhere = f"127.0.0.1:{free_port()}/none/cache:x"
    run = build(tmp_path / "s", ctx, "--cache-from", f"type=registry,ref={nowhere}",
                "--cache-to", f"type=registry,ref={nowhere}",
                "--cache-from", f"type=local,src={tmp_path / 'missing'}").check()
    assert f"WARNING: cannot import the build cache from {nowhere}" in run.stderr
    assert f"WARNING: cannot import the build cache from {tmp_path / 'missing'}" in run.stderr
    assert f"WARNING: cannot export the build cache to {nowhere}" in run.stderr
    assert "Traceback" not in run.stderr


def _upload(host: str, repo: str, data: bytes) -> dict:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=f"http://{host}") as c:
        loc = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert c.put(f"{loc}&digest={digest}", content=data).status_code == 201
    return {"digest": digest, "size": len(data)}


def _put_cache_manifest(host: str, repo: str, tag: str, records: bytes) -> None:
    config = _upload(host, repo, b'{"mode":"min","schema":"lamina.cache.v1"}')
    rec = _upload(host, repo, records)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.lamina.cache.v1+json",
                "config": {"mediaType": "application/vnd.lamina.cache.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.lamina.cache.records.v1+json", **rec}]}
    resp = httpx.put(f"http://{host}/v2/{repo}/manifests/{tag}", content=json.dumps(manifest).encode(),
                     headers={"Content-Type": manifest["mediaType"]})
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("records", [
    b'{"schema":"lamina.cache.v1","records":[{"key":"0',                        # truncated JSON
    b'{"schema":"lamina.cache.v1","layers":[],"records":[{"key":"nothex"}]}',  # a bad key
    b'{"schema":"lamina.cache.v1","layers":[],"records":[{"key":"' + b"a" * 64
    + b'","layer":"sha256:' + b"b" * 64 + b'"}]}',                                # a layer not in the table
])
def test_corrupted_cache_json_is_a_warning(reg, tmp_path, records):
    _put_cache_manifest(reg, "bad/cache", "t", records)
    ctx = _context(tmp_path / "ctx", SINGLE)
    run = build(tmp_path / "s", ctx, "--cache-from", f"{reg}/bad/cache:t").check()
    assert f"WARNING: cannot import the build cache from {reg}/bad/cache:t" in run.stderr, run.stderr
    assert not run.step("--install").cached


def test_corrupted_local_blob_is_a_warning(tmp_path):
    ctx = _context(tmp_path / "ctx", SINGLE)
    layout = tmp_path / "layout"
    build(tmp_path / "a", ctx, "--cache-to", f"type=local,dest={layout}").check()
    manifest = json.loads(_blob(layout, json.loads((layout / "index.json").read_text())["manifests"][0]))
    records = layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    data = bytearray(records.read_bytes())
    data[10] ^= 1
    records.write_bytes(bytes(data))
    run = build(tmp_path / "b", ctx, "--cache-from", f"type=local,src={layout}").check()
    assert "WARNING: cannot import the build cache" in run.stderr and "does not match its digest" in run.stderr
    assert not run.step("--install").cached


def _blob(layout: Path, desc: dict) -> bytes:
    return (layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()


def test_a_layer_lost_after_the_hits_rebuilds_without_the_cache(tmp_path):
    """The cache loads, every step hits, then the final layer's blob cannot be
    fetched (deleted from the registry's storage): a warning, and the build runs
    the steps instead."""
    ctx = _context(tmp_path / "ctx", SINGLE)
    with registry(tmp_path / "reg") as host:
        ref = f"{host}/lost/cache:1"
        build(tmp_path / "a", ctx, "--cache-to", f"type=registry,ref={ref}").check()
        cache = _skopeo_raw(f"docker://{ref}")
        last_layer = cache["layers"][-2]["digest"].split(":")[1]  # the last one is the records blob
        data = tmp_path / "reg" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
        (data / last_layer[:2] / last_layer / "data").unlink()
        run = build(tmp_path / "cold", ctx, "--cache-from", ref).check()
    assert "building again without the remote cache" in run.stderr, run.stderr
    first, second = [s for s in run.steps if "/random" in s.title]  # numbering goes on
    assert first.cached and second.done and not second.cached


def test_concurrent_writers_leave_a_readable_cache(reg, tmp_path):
    """Two processes export different builds to one ref at once, twice (mode=max
    merges); the cache read afterwards is whole: one of them builds all cached."""
    ctxs = [_context(tmp_path / f"ctx{i}", SINGLE, greeting=f"writer {i}\n") for i in (0, 1)]
    ref = f"{reg}/race/cache:1"
    for round_ in range(2):
        procs = [subprocess.Popen(
            lamina_argv(tmp_path / f"w{i}-{round_}", "build", "--progress", "plain",
                        "--cache-to", f"type=registry,ref={ref},mode=max", str(ctxs[i])),
            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in (0, 1)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            assert "WARNING" not in err, err
    results = [build(tmp_path / f"cold{i}", ctxs[i], "--cache-from", ref).check() for i in (0, 1)]
    for run in results:
        assert "WARNING" not in run.stderr, run.stderr
    assert any(all(r.step(t).cached for t in ("--install", "greeting.txt", "/random")) for r in results)


def test_concurrent_pushes_of_one_ref_store_one_whole_cache(reg, tmp_path):
    """Eight threads write different caches to one ref at once (each a valid
    artifact): what is read afterwards decodes and is one of them whole (mode=min)
    or holds a merge of whole ones (mode=max)."""
    from lamina.store.registry.cache import CacheData, CacheRecord, RegistryCacheSource, push_cache
    from lamina.store.store import Store

    store = Store(tmp_path / "store")
    written = []
    for i in range(8):
        written.append(CacheData(records=tuple(
            CacheRecord(key=f"{i:02x}{j:02x}".ljust(64, "0"), diff_id=None, parent="scratch",
                        position=f"w{i}", created=float(i)) for j in range(20))))
    errors = []

    def write(data, mode):
        try:
            push_cache(store, f"{reg}/threads/cache:{mode}", data, mode=mode, provide=lambda l: None)
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    for mode in ("min", "max"):
        threads = [threading.Thread(target=write, args=(d, mode)) for d in written]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        source = RegistryCacheSource(f"{reg}/threads/cache:{mode}")
        try:
            got = {r.key for r in source.load().records}
        finally:
            source.close()
        wholes = [{r.key for r in d.records} for d in written]
        if mode == "min":
            assert got in wholes
        else:
            assert any(w <= got for w in wholes) and got == set().union(*[w for w in wholes if w & got])
    store.close()


@pytest.mark.parametrize("flag,value,message", [
    ("--cache-to", "type=gha", "type must be registry, local or inline"),
    ("--cache-from", "type=inline", "read an inline cache with type=registry,ref=IMAGE"),
    ("--cache-to", "type=registry,ref=x/y:z,mode=all", "mode must be min or max"),
    ("--cache-to", "type=registry", "ref=NAME:TAG is required"),
    ("--cache-to", "type=local,src=/x", "written to dest=DIR"),
    ("--cache-to", "type=registry,ref=x/y:z,colour=red", "unknown option 'colour'"),
    ("--cache-to", "x/y:z", "expected type=registry,ref=NAME:TAG"),
])
def test_bad_cache_flags_are_one_clear_error(tmp_path, flag, value, message):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\n")
    run = build(tmp_path / "s", ctx, flag, value)
    assert run.code != 0 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


SECRET_ARG = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS builder
ARG TOKEN
ENV MODE=release-$TOKEN
RUN test -n "$TOKEN" && echo built > /out
COPY greeting.txt /greeting-$TOKEN.txt

FROM base
COPY --from=builder /out /out
"""


def test_exported_cache_never_shows_build_arg_values(reg, tmp_path):
    """A builder stage's ARG (a token, say) must not be readable from a mode=max cache
    or an inline cache: the records carry sealed values; a miss is still explained."""
    token = "tok3n-4f9c2e61d7"
    ctx = _context(tmp_path / "ctx", SECRET_ARG)
    layout, ref = tmp_path / "layout", f"{reg}/sealed/app:1"
    build(tmp_path / "a", ctx, "--build-arg", f"TOKEN={token}", "-t", ref, "--push",
          "--cache-to", f"type=local,dest={layout},mode=max", "--cache-to", "type=inline").check()
    blobs = list((layout / "blobs" / "sha256").iterdir())
    assert blobs
    for blob in blobs:
        assert token.encode() not in blob.read_bytes(), blob
    assert token not in json.dumps(_image_manifest(ref))
    # the same token in an empty store: every step hits
    again = build(tmp_path / "b", ctx, "--build-arg", f"TOKEN={token}",
                  "--cache-from", f"type=local,src={layout}").check()
    _all_cached(again, ("COPY busybox", "--install", "test -n", "COPY --from=builder"))
    # another token: the miss names the ARG, never either value
    other = build(tmp_path / "c", ctx, "--build-arg", "TOKEN=other-value",
                  "--cache-from", f"type=local,src={layout}").check()
    step = other.step("test -n")
    assert not step.cached and step.miss == "ARG TOKEN changed; ENV MODE changed", other.stderr
    assert token not in other.stderr
