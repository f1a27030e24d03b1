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
