"""Defects found reviewing the build engine's seams (executor <-> plan <-> sandbox <->
store), each pinned by the test that failed before its fix."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build, build_rootfs, make_context

pytestmark = pytest.mark.root


def test_build_network_mode_is_in_the_run_cache_key(build_store, tmp_path):
    # a RUN without --network= uses the build's --network: a layer built offline
    # must not be reused by a build with the host's network, nor the reverse
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN grep -c : /proc/net/dev > /ifaces\n")
    build(root, ctx).check()
    host = build(root, ctx, "--network", "host").check()
    step = host.step("RUN grep")
    assert not step.cached
    assert "network" in step.miss
    assert build(root, ctx, "--network", "host").check().step("RUN grep").cached
    assert build(root, ctx).check().step("RUN grep").cached


def test_run_bind_mount_of_the_context_honours_dockerignore(build_store, tmp_path):
    # BuildKit sends the context through .dockerignore for bind mounts too: an ignored
    # file must be neither visible to the RUN nor able to change its result unseen
    # (the cache key hashes only what the ignore rules let through)
    root, _ = build_store
    dockerfile = ("FROM bb\nRUN --mount=type=bind,target=/src "
                  "ls -A /src > /listing && cat /src/sub/*.txt > /content\n")
    ctx = make_context(tmp_path / "ctx", dockerfile, {
        ".dockerignore": "secret.env\nsub/private.txt\n",
        "secret.env": "TOKEN=hunter2\n", "a.txt": "a\n",
        "sub/public.txt": "public\n", "sub/private.txt": "private\n"})
    out = tmp_path / "out"
    build_rootfs(root, ctx, out)
    listing = (out / "listing").read_text().split()
    assert "secret.env" not in listing and "a.txt" in listing
    assert (out / "content").read_text() == "public\n"
    # changing an ignored file changes nothing: the step stays cached
    (ctx / "sub" / "private.txt").write_text("changed\n")
    assert build(root, ctx).check().step("RUN --mount").cached


def test_source_date_epoch_is_not_in_the_cache_key(build_store, tmp_path, monkeypatch):
    # step layers keep real times and the commit clamps them (store.layertimes): another
    # epoch reuses every step, and the image is still the one a fresh build gives
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY f /epoch-f\nRUN touch /epoch-made\n",
                       {"f": "x\n"})
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    build(root, ctx).check()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # in the past: every time clamped
    cached = build(root, ctx).check()
    assert cached.step("COPY f").cached and cached.step("RUN touch").cached
    fresh = build(root, ctx, "--no-cache").check()
    assert cached.image_id == fresh.image_id


def test_missing_bind_mount_source_is_reported_as_a_run_mount_error(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx",
                       "FROM bb\nRUN --mount=type=bind,source=nothere,target=/src true\n")
    run = build(root, ctx)
    assert run.code == 1
    first = run.stderr.strip().splitlines()[-2]
    assert first.startswith(f"lamina: {ctx / 'Dockerfile'}:2: RUN --mount=type=bind")
    assert "nothere" in first and "COPY" not in first


def test_secret_given_as_env_keeps_non_utf8_bytes(build_store, tmp_path):
    root, _ = build_store
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"ab\xffc")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=secret,id=tok,env=TOK "
                       "printf %s \"$TOK\" | od -An -tx1 > /dev/stderr\n")
    run = build(root, ctx, "--secret", f"id=tok,src={secret}").check()
    assert run.step("RUN --mount").output[-1].split() == ["61", "62", "ff", "63"]
    # a NUL byte cannot be in an environment variable: a clear error naming the secret
    secret.write_bytes(b"a\0b")
    failed = build(root, ctx, "--no-cache", "--secret", f"id=tok,src={secret}")
    assert failed.code == 1 and "internal error" not in failed.stderr
    assert "secret 'tok'" in failed.stderr


def test_os_error_in_a_filesystem_step_is_one_clear_line(build_store, tmp_path):
    root, _ = build_store
    long_name = "n" * 300
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nWORKDIR /x/{long_name}\n")
    run = build(root, ctx)
    assert run.code == 1
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    message = run.stderr.strip().splitlines()[-2]
    assert message.startswith(f"lamina: {ctx / 'Dockerfile'}:2: ")
    assert "File name too long" in message
