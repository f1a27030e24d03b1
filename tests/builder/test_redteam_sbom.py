"""Red-team: the SBOM scanners fed a hostile image's files stay bounded in time and
memory and never read (or list) the host's files."""

from __future__ import annotations

import json
import os
import time

import pytest

from lamina.builder.attest import sbom
from lamina.builder.errors import BuildError


def test_redteam_dpkg_status_continuations_linear():
    # 400k continuation lines (4.8 MB): folding them by string concatenation took
    # ~15 s (quadratic; a 64 MiB status file would take most of an hour)
    n = 400_000
    text = ("Package: a\nVersion: 1\nStatus: install ok installed\nDescription: x\n"
            + " abcdefghij\n" * n + "\nPackage: b\nVersion: 2\nStatus: install ok installed\n")
    t = time.monotonic()
    pkgs = sbom.parse_dpkg_status(text)
    assert time.monotonic() - t < 3
    assert [(p.name, p.version) for p in pkgs] == [("a", "1"), ("b", "2")]
    # RFC 822 folding: the continuation lines belong to the field they follow
    (para,) = list(sbom._paragraphs("Description: x\n y\n  z\nOther: 1\n"))
    assert para == {"Description": "x\ny\nz", "Other": "1"}


def test_redteam_apk_db_blocks():
    text = "P:a\nV:1\nL:MIT\n\nP:b\nV:2\n \t \nP:c\nV:3"
    assert [(p.name, p.version, p.license) for p in sbom.parse_apk_installed(text)] == \
        [("a", "1", "MIT"), ("b", "2", None), ("c", "3", None)]


def test_redteam_json_deep_nesting_is_not_a_crash():
    deep = "[" * 200_000 + "]" * 200_000
    assert sbom.parse_package_lock(deep, "/package-lock.json") == []
    assert sbom.parse_package_json(deep, "/node_modules/a/package.json") is None
    deep_obj = '{"packages": ' + '{"a":' * 100_000 + "1" + "}" * 100_001
    assert sbom.parse_package_lock(deep_obj, "/package-lock.json") == []


def test_redteam_json_container_flood_is_skipped(monkeypatch):
    monkeypatch.setattr(sbom, "MAX_JSON_CONTAINERS", 50)
    lock = {"lockfileVersion": 3, "packages": {f"node_modules/p{i}": {"version": "1.0.0"} for i in range(60)}}
    assert sbom.parse_package_lock(json.dumps(lock), "/l") == []
    lock["packages"] = {f"node_modules/p{i}": {"version": "1.0.0"} for i in range(10)}
    assert len(sbom.parse_package_lock(json.dumps(lock), "/l")) == 10


def _pkg_json(d, name):
    d.mkdir(parents=True, exist_ok=True)
    (d / "package.json").write_text(json.dumps({"name": name, "version": "1.0.0"}))


def test_redteam_scope_symlink_lists_inside_the_image(tmp_path):
    host = tmp_path / "host" / "secret"            # a host directory the scan must not list
    (host / "leak").mkdir(parents=True)
    img = tmp_path / "img"
    mirror = img / host.relative_to("/")           # where `@s -> /…/secret` leads inside the image
    _pkg_json(mirror / "leak", "leak")
    _pkg_json(mirror / "decoy", "decoy")
    (img / "app" / "node_modules").mkdir(parents=True)
    os.symlink(str(host), img / "app" / "node_modules" / "@s")
    pkgs, _ = sbom.scan_root(img)
    # the image's own @s (resolved inside the image) holds leak and decoy; the host's
    # directory (leak only) must not decide what is listed
    assert sorted(p.name for p in pkgs if p.location.startswith("/app/")) == ["decoy", "leak"]


def test_redteam_symlinked_records_bounded(tmp_path, monkeypatch):
    img = tmp_path / "img"
    big = {"lockfileVersion": 3, "packages": {"node_modules/x": {"version": "1.0.0"}}, "pad": "y" * 5000}
    (img / "src").mkdir(parents=True)
    (img / "src" / "package-lock.json").write_text(json.dumps(big))
    for i in range(40):  # one file read from many places through symlinks
        (img / f"p{i}").mkdir()
        os.symlink("/src/package-lock.json", img / f"p{i}" / "package-lock.json")
    monkeypatch.setattr(sbom, "MAX_SCAN_BYTES", 100_000)
    with pytest.raises(BuildError, match="SBOM"):
        sbom.scan_root(img)
    monkeypatch.setattr(sbom, "MAX_SCAN_BYTES", 1 << 30)
    pkgs, _ = sbom.scan_root(img)
    assert len(pkgs) == 41


def test_redteam_fifo_and_host_symlinks_not_read(tmp_path):
    hostfile = tmp_path / "hoststatus"
    hostfile.write_text("Package: hostpkg\nVersion: 9\nStatus: install ok installed\n")
    img = tmp_path / "img"
    (img / "var/lib/dpkg").mkdir(parents=True)
    os.symlink(str(hostfile), img / "var/lib/dpkg/status")   # absolute: inside the image, missing
    (img / "lib/apk/db").mkdir(parents=True)
    os.mkfifo(img / "lib/apk/db/installed")                  # would block a plain open()
    (img / "etc").mkdir()
    os.symlink("../../../../../../" + str(hostfile), img / "etc/os-release")
    (img / "usr/lib/python3/x.dist-info").mkdir(parents=True)
    os.mkfifo(img / "usr/lib/python3/x.dist-info/METADATA")
    t = time.monotonic()
    pkgs, osr = sbom.scan_root(img)
    assert time.monotonic() - t < 5
    assert pkgs == [] and osr == {}
