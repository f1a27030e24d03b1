"""The SPDX SBOM (builder.attest.sbom): package database parsers against the formats'
documented shapes, purls against the purl-spec examples, documents validated by
spdx-tools (the SPDX project's own parser and validator), npm lock files (written by
npm itself, read back by `npm query`), and `build --sbom=true` of images holding a dpkg
status file, Python dist-info/egg-info, npm packages and lock files, an apk database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import textwrap

import pytest

from lamina.builder.attest.sbom import (Package, parse_apk_installed, parse_dpkg_status, parse_package_json,
                                        parse_package_lock, parse_python_metadata, purl, spdx_document,
                                        spdx_expression)
from tests.builder.buildkit import REPO, build, lamina, make_base, make_context
from tests.conftest import require_tool

DPKG_STATUS = textwrap.dedent("""\
    Package: base-files
    Essential: yes
    Status: install ok installed
    Priority: required
    Architecture: amd64
    Version: 12.4+deb12u5
    Maintainer: Santiago Vila <sanvila@debian.org>
    Description: Debian base system miscellaneous files
     This package contains the basic filesystem hierarchy.

    Package: libc6
    Status: install ok installed
    Architecture: amd64
    Multi-Arch: same
    Source: glibc
    Version: 2.36-9+deb12u4
    Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
    Description: GNU C Library: Shared libraries

    Package: removed-one
    Status: deinstall ok config-files
    Architecture: amd64
    Version: 1.0-1
    Description: only its conffiles are left
    """)

APK_INSTALLED = textwrap.dedent("""\
    C:Q1abc=
    P:musl
    V:1.2.4-r2
    A:x86_64
    S:383152
    I:622592
    T:the musl c library (libc) implementation
    U:https://musl.libc.org/
    L:MIT
    o:musl
    m:Timo Teräs <timo.teras@iki.fi>

    C:Q1def=
    P:busybox
    V:1.36.1-r5
    A:x86_64
    L:GPL-2.0-only
    o:busybox
    """)


def dpkg_query_installed(admindir) -> set[tuple[str, str, str]]:
    """(package, version, arch) of the installed packages of a dpkg database, as
    Debian's own dpkg-query lists them (the oracle)."""
    dpkg_query = require_tool("dpkg-query")
    out = subprocess.run([dpkg_query, f"--admindir={admindir}", "-W",
                          "-f", "${db:Status-Status} ${Package} ${Version} ${Architecture}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {tuple(l.split()[1:]) for l in out.splitlines() if l.split()[:1] == ["installed"]}


def test_dpkg_status_lists_installed_packages_only(tmp_path):
    pkgs = parse_dpkg_status(DPKG_STATUS)
    assert [(p.name, p.version, p.arch) for p in pkgs] == [("base-files", "12.4+deb12u5", "amd64"),
                                                           ("libc6", "2.36-9+deb12u4", "amd64")]
    (tmp_path / "status").write_text(DPKG_STATUS)
    assert {(p.name, p.version, p.arch) for p in pkgs} == dpkg_query_installed(tmp_path)


def test_apk_installed_db():
    pkgs = parse_apk_installed(APK_INSTALLED)
    assert [(p.name, p.version, p.license, p.arch) for p in pkgs] == [
        ("musl", "1.2.4-r2", "MIT", "x86_64"), ("busybox", "1.36.1-r5", "GPL-2.0-only", "x86_64")]


def test_python_metadata_and_package_json():
    meta = "Metadata-Version: 2.1\nName: Flask_Login\nVersion: 0.6.3\nLicense: MIT\n\nlong description\n"
    p = parse_python_metadata(meta, "/x/Flask_Login-0.6.3.dist-info")
    assert (p.name, p.version, p.license) == ("Flask_Login", "0.6.3", "MIT")
    pep639 = "Metadata-Version: 2.4\nName: attrs\nVersion: 24.2.0\nLicense-Expression: MIT\nLicense: ignored\n"
    assert parse_python_metadata(pep639, "/x").license == "MIT"
    classified = ("Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n"
                  "Classifier: License :: OSI Approved :: MIT License\n")
    assert parse_python_metadata(classified, "/x").license == "MIT License"
    assert parse_python_metadata("Metadata-Version: 2.1\nName: x\n", "/x") is None
    npm = parse_package_json(json.dumps({"name": "@scope/left-pad", "version": "1.3.0", "license": "WTFPL"}), "/p")
    assert (npm.name, npm.version, npm.license) == ("@scope/left-pad", "1.3.0", "WTFPL")
    old = parse_package_json(json.dumps({"name": "a", "version": "1.0.0",
                                         "licenses": [{"type": "MIT"}, {"type": "Apache-2.0"}]}), "/p")
    assert old.license == "MIT OR Apache-2.0"
    assert parse_package_json("{not json", "/p") is None


def test_purls_follow_the_purl_spec_examples():
    # purl-spec PURL-TYPES.rst examples: pkg:deb/debian/curl@7.50.3-1?arch=i386&distro=jessie,
    # pkg:pypi/django-allauth@12.23, pkg:npm/%40angular/animation@12.3.1, pkg:apk/alpine/curl@7.83.0-r0?arch=x86
    assert purl(Package("deb", "curl", "7.50.3-1", None, "/", "i386"), {"ID": "debian", "VERSION_ID": "8"}) \
        == "pkg:deb/debian/curl@7.50.3-1?arch=i386&distro=debian-8"
    assert purl(Package("pypi", "Django_Allauth", "12.23", None, "/")) == "pkg:pypi/django-allauth@12.23"
    assert purl(Package("npm", "@angular/animation", "12.3.1", None, "/")) == "pkg:npm/%40angular/animation@12.3.1"
    assert purl(Package("apk", "curl", "7.83.0-r0", None, "/", "x86"), {"ID": "alpine"}) \
        == "pkg:apk/alpine/curl@7.83.0-r0?arch=x86"
    # apk: the vendor namespace lowercased; the release as the distro qualifier (the apk
    # type's repository note: implied "from the distro qualifiers key"); keys sorted
    assert purl(Package("apk", "apk-tools", "2.14.0-r5", None, "/", "aarch64"),
                {"ID": "Alpine", "VERSION_ID": "3.19.1"}) \
        == "pkg:apk/alpine/apk-tools@2.14.0-r5?arch=aarch64&distro=alpine-3.19.1"
    # npm: name and scope lowercased (npm-definition.json), the scope's @ encoded
    assert purl(Package("npm", "@Angular/Animation", "12.3.1", None, "/")) == "pkg:npm/%40angular/animation@12.3.1"
    assert purl(Package("npm", "JSONStream", "1.3.5", None, "/")) == "pkg:npm/jsonstream@1.3.5"
    # a Debian epoch's colon is percent-encoded (purl: the version is percent-encoded)
    assert "@1%3A2.3-1" in purl(Package("deb", "x", "1:2.3-1", None, "/"), {"ID": "debian"})


# -- npm lock files --------------------------------------------------------------------
# tests/builder/sbomdata/npm-lock/v{1,2,3}: one project (a workspace, a scoped package, an
# alias, a dev dependency, a version conflict that nests is-number 7 under
# to-regex-range) locked by npm 11 itself with --lockfile-version=1, 2 and 3.

NPM_LOCKS = REPO / "tests" / "builder" / "sbomdata" / "npm-lock"
# what the lock files say is installed where (read off the files as npm documents the
# format: `packages` keys / the v1 tree), dev entries left out
LOCKED = {("node_modules/@sindresorhus/is", "@sindresorhus/is", "4.6.0"),
          ("node_modules/is-number", "is-number", "6.0.0"),
          ("node_modules/isnum7", "is-number", "7.0.0"),
          ("node_modules/to-regex-range", "to-regex-range", "5.0.1"),
          ("node_modules/to-regex-range/node_modules/is-number", "is-number", "7.0.0"),
          ("packages/util", "@fixture/util", "0.1.0")}


def npm_query_locked(project) -> set[tuple[str, str, str]]:
    """(location, name, version) of every non-dev package npm itself reads from the
    project's lock file (`npm query '*' --package-lock-only`, offline), the root left out."""
    npm = require_tool("npm")
    out = subprocess.run([npm, "query", "*", "--package-lock-only", "--offline"], cwd=project,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return {(n["location"], n["name"], n["version"]) for n in json.loads(out) if n["location"] and not n.get("dev")}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_package_lock_as_npm_reads_it(version, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(NPM_LOCKS / f"v{version}", project)
    lock = project / "package-lock.json"
    assert json.loads(lock.read_text())["lockfileVersion"] == version
    pkgs = parse_package_lock(lock.read_text(), "/app/package-lock.json")
    got = {(p.location.split("#", 1)[1], p.name, p.version) for p in pkgs}
    assert all(p.kind == "npm" and p.location.startswith("/app/package-lock.json#") for p in pkgs)
    assert len(got) == len(pkgs)
    # v1 records a workspace link as `file:packages/util` with no version (npm reads it
    # from the folder): it is the one entry left out
    want = LOCKED - {("packages/util", "@fixture/util", "0.1.0")} if version == 1 else LOCKED
    assert got == want
    oracle = npm_query_locked(project)
    assert got == (oracle - {("packages/util", "@fixture/util", "0.1.0")} if version == 1 else oracle)
    if version > 1:  # v2/v3 carry the license field of each package.json
        assert {p.name: p.license for p in pkgs}["@sindresorhus/is"] == "MIT"


def test_package_lock_shapes_from_npm_docs():
    # a v2 lock keeps the legacy `dependencies` beside `packages`: only `packages` is read
    v2 = {"lockfileVersion": 2, "packages": {"": {"name": "root", "version": "1.0.0"},
                                             "node_modules/a": {"version": "1.0.0"}},
          "dependencies": {"a": {"version": "1.0.0"}, "ghost": {"version": "9.9.9"}}}
    assert [(p.name, p.version) for p in parse_package_lock(json.dumps(v2), "/l")] == [("a", "1.0.0")]
    # v1: a scoped alias, nested dependencies, dev subtree, git specifier kept, file: dropped
    v1 = {"lockfileVersion": 1, "dependencies": {
        "lp": {"version": "npm:@scope/left-pad@1.3.0"},
        "a": {"version": "2.0.0", "dependencies": {"b": {"version": "1.1.0", "dependencies": {
            "c": {"version": "3.0.0"}}}}},
        "d": {"version": "1.0.0", "dev": True, "dependencies": {"e": {"version": "1.0.0", "dev": True}}},
        "g": {"version": "git+https://example.com/g.git#0123456789abcdef0123456789abcdef01234567"},
        "local": {"version": "file:libs/local"}}}
    got = {(p.location, p.name, p.version) for p in parse_package_lock(json.dumps(v1), "/l")}
    assert got == {("/l#node_modules/lp", "@scope/left-pad", "1.3.0"), ("/l#node_modules/a", "a", "2.0.0"),
                   ("/l#node_modules/a/node_modules/b", "b", "1.1.0"),
                   ("/l#node_modules/a/node_modules/b/node_modules/c", "c", "3.0.0"),
                   ("/l#node_modules/g", "g", "git+https://example.com/g.git#0123456789abcdef0123456789abcdef01234567")}
    # v3: link entries and entries without a version are skipped; a folder outside
    # node_modules needs its `name`
    v3 = {"lockfileVersion": 3, "packages": {
        "node_modules/w": {"resolved": "libs/w", "link": True}, "libs/w": {"name": "w", "version": "0.0.1"},
        "libs/anonymous": {"version": "1.0.0"}, "node_modules/noversion": {},
        "node_modules/o": {"version": "1.0.0", "optional": True, "devOptional": True, "inBundle": True}}}
    got = {(p.location, p.name, p.version) for p in parse_package_lock(json.dumps(v3), "/l")}
    assert got == {("/l#libs/w", "w", "0.0.1"), ("/l#node_modules/o", "o", "1.0.0")}
    assert parse_package_lock("{broken", "/l") == [] and parse_package_lock("[]", "/l") == []


@pytest.mark.parametrize("text,want", [
    ("MIT", "MIT"), ("mit", "MIT"), ("Apache-2.0 OR MIT", "Apache-2.0 OR MIT"),
    ("(MIT OR Apache-2.0) AND BSD-3-Clause", "(MIT OR Apache-2.0) AND BSD-3-Clause"),
    ("GPL-2.0-or-later WITH Classpath-exception-2.0", "GPL-2.0-or-later WITH Classpath-exception-2.0"),
    ("BSD License", None), ("MIT OR", None), ("(MIT", None), ("Apache Software License", None), ("", None),
])
def test_spdx_expression(text, want):
    assert spdx_expression(text) == want


def _validate(doc: dict, tmp_path) -> None:
    """spdx-tools parses the JSON and validates it as a full SPDX 2.3 document."""
    pytest.importorskip("spdx_tools", reason="spdx-tools (test extra) validates the documents")
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    path = tmp_path / "sbom.spdx.json"
    path.write_text(json.dumps(doc))
    document = parse_file(str(path))
    messages = validate_full_spdx_document(document, "SPDX-2.3")
    assert not messages, [m.validation_message for m in messages]


def test_document_validates_with_spdx_tools(tmp_path):
    pkgs = parse_dpkg_status(DPKG_STATUS) + parse_apk_installed(APK_INSTALLED) + [
        Package("pypi", "requests", "2.31.0", "Apache 2.0", "/usr/lib/python3/dist-packages/requests.dist-info"),
        Package("npm", "@scope/x", "1.0.0", "ISC", "/app/node_modules/@scope/x/package.json")]
    doc = spdx_document(pkgs, name="app:1", created_epoch=0, tool_version="0.1.0",
                        os_release={"ID": "debian", "VERSION_ID": "12"}, image_digest="sha256:" + "a" * 64)
    _validate(doc, tmp_path)
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["creationInfo"]["created"] == "1970-01-01T00:00:00Z"
    by_name = {p["name"]: p for p in doc["packages"]}
    assert by_name["musl"]["licenseDeclared"] == "MIT"
    # free text that is no SPDX expression: a LicenseRef with the text kept
    ref = by_name["requests"]["licenseDeclared"]
    assert ref.startswith("LicenseRef-")
    assert {"licenseId": ref, "extractedText": "Apache 2.0", "name": "Apache 2.0"} in doc["hasExtractedLicensingInfos"]
    # the same packages in another order: the same bytes
    again = spdx_document(list(reversed(pkgs)), name="app:1", created_epoch=0, tool_version="0.1.0",
                          os_release={"ID": "debian", "VERSION_ID": "12"}, image_digest="sha256:" + "a" * 64)
    assert json.dumps(again, sort_keys=True) == json.dumps(doc, sort_keys=True)


# -- built images -----------------------------------------------------------------------

SBOM_DOCKERFILE = """\
FROM bb
COPY rootfs/ /
RUN mkdir -p /usr/local/lib/python3.11/site-packages/flask-3.0.0.dist-info \\
 && printf 'Metadata-Version: 2.1\\nName: Flask\\nVersion: 3.0.0\\nLicense-Expression: BSD-3-Clause\\n' \\
    > /usr/local/lib/python3.11/site-packages/flask-3.0.0.dist-info/METADATA
"""


@pytest.mark.root
def test_build_sbom_lists_dpkg_python_and_npm_packages(tmp_path):
    root = tmp_path / "store"
    make_base(root, tmp_path / "base")
    ctx = make_context(tmp_path / "ctx", SBOM_DOCKERFILE, {
        "rootfs/var/lib/dpkg/status": DPKG_STATUS,
        "rootfs/etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
        "rootfs/usr/lib/python3/dist-packages/six-1.16.0.egg-info/PKG-INFO":
            "Metadata-Version: 1.1\nName: six\nVersion: 1.16.0\nLicense: MIT\n",
        "rootfs/app/node_modules/left-pad/package.json": json.dumps({"name": "left-pad", "version": "1.3.0",
                                                                      "license": "WTFPL"}),
        "rootfs/app/node_modules/@babel/core/package.json": json.dumps({"name": "@babel/core",
                                                                         "version": "7.24.0", "license": "MIT"}),
    })
    run = build(root, ctx, "-t", "sbom:1", "--sbom=true").check()
    shown = lamina(root, "inspect", "--sbom", "sbom:1")
    assert shown.code == 0, shown.stderr
    st = json.loads(shown.stdout)
    assert st["predicateType"] == "https://spdx.dev/Document"
    manifest_digest = json.loads(lamina(root, "inspect", "sbom:1").stdout)[0]["Descriptor"]["digest"]
    assert st["subject"][0]["digest"] == {"sha256": manifest_digest.split(":")[1]}
    doc = st["predicate"]
    _validate(doc, tmp_path)
    purls = {r["referenceLocator"] for p in doc["packages"] for r in p.get("externalRefs", [])}
    assert {"pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64&distro=debian-12",
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12",
            "pkg:pypi/flask@3.0.0", "pkg:pypi/six@1.16.0",
            "pkg:npm/left-pad@1.3.0", "pkg:npm/%40babel/core@7.24.0"} == purls
    licenses = {p["name"]: p.get("licenseDeclared") for p in doc["packages"]}
    assert licenses["Flask"] == "BSD-3-Clause" and licenses["libc6"] == "NOASSERTION"
    # the SBOM does not change the image: same ID without it; a later build of the same
    # image without --sbom keeps the SBOM the image has
    plain = build(root, ctx, "-t", "sbom:2", "--sbom=false").check()
    assert plain.image_id == run.image_id
    assert json.loads(lamina(root, "inspect", "--sbom", "sbom:2").stdout)["predicate"] == doc
    missing = lamina(root, "inspect", "--sbom", "bb")
    assert missing.code == 1 and "has no sbom attestation" in missing.stderr


# /lib/apk/db/installed as apk-tools writes it: one block per package, a blank line
# after each; package fields (C checksum, P name, V version, A arch, S/I sizes, T, U, L
# license, o origin, m maintainer, t build time, c commit, D/p/r depends/provides/
# replaces) then its directories (F, M acl) and files (R, a acl, Z checksum).
ALPINE_INSTALLED = textwrap.dedent("""\
    C:Q1yB3CVUFMOjnLOOEAUIUJ3MDcGvE=
    P:alpine-baselayout-data
    V:3.4.3-r2
    A:x86_64
    S:11211
    I:77824
    T:Alpine base dir structure and init scripts
    U:https://git.alpinelinux.org/cgit/aports/tree/main/alpine-baselayout
    L:GPL-2.0-only
    o:alpine-baselayout
    m:Natanael Copa <ncopa@alpinelinux.org>
    t:1704294040
    c:7749273bc2ba6ff4b1f7ae1dbd2c3c4e3d2dbb27
    r:alpine-baselayout
    F:etc
    R:fstab
    Z:Q11Q7hNe8QpDS531guqCdrXBzoA/o=
    R:group
    Z:Q12Ii17YnuuO8FlzZNWzwANWKr9s8=
    R:hostname
    Z:Q16nVwYVXP/tChvUPdukVD2ifXOmc=

    C:Q1NnJMbPwEmYOhXL2BKjaA3TJHcWU=
    P:musl
    V:1.2.4_git20230717-r4
    A:x86_64
    S:407278
    I:663552
    T:the musl c library (libc) implementation
    U:https://musl.libc.org/
    L:MIT
    o:musl
    m:Timo Teräs <timo.teras@iki.fi>
    t:1704202917
    c:0c2a4a5f3e6d6a3b6a53c7c5cfbdbc2e46b1d3c0
    p:so:libc.musl-x86_64.so.1=1
    F:lib
    R:ld-musl-x86_64.so.1
    a:0:0:755
    Z:Q1a0z9V9bS1sZsWmLpRnpZrOyeH8Y=
    R:libc.musl-x86_64.so.1

    C:Q1kG6QHyO2zIJqYAbRu4PRNXp8ME4=
    P:busybox
    V:1.36.1-r15
    A:x86_64
    S:508000
    I:947200
    T:Size optimized toolbox of many common UNIX utilities
    U:https://busybox.net/
    L:GPL-2.0-only
    o:busybox
    m:Sören Tempel <soeren+alpine@soeren-tempel.net>
    t:1703090592
    c:a3b0c0f0b6b5e0b1d0c5b6d1f0d1c3c0b2e2a1f0
    D:so:libc.musl-x86_64.so.1
    p:cmd:busybox=1.36.1-r15 cmd:sh=1.36.1-r15
    F:bin
    R:busybox
    a:0:0:755
    Z:Q1WUwBY0eOGgzgVxTZxJBZPyQUicI=
    F:etc
    R:securetty
    Z:Q1mB95Hq2NUTZ599RDiSsj9w5FrOU=

    """)


@pytest.mark.root
def test_build_sbom_of_an_alpine_style_image_with_npm_lock_files(tmp_path):
    """A busybox image laid out as an Alpine one (os-release, apk database) holding two
    Node projects: /srv/api ships only its lock file (installs at start); /app has its
    node_modules installed (one package) beside a lock that locks more."""
    root = tmp_path / "store"
    make_base(root, tmp_path / "base")
    v3 = (NPM_LOCKS / "v3" / "package-lock.json").read_text()
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY rootfs/ /\n", {
        "rootfs/etc/os-release": 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\n',
        "rootfs/lib/apk/db/installed": ALPINE_INSTALLED,
        "rootfs/srv/api/package.json": (NPM_LOCKS / "v3" / "package.json").read_text(),
        "rootfs/srv/api/package-lock.json": v3,
        "rootfs/app/package-lock.json": v3,
        "rootfs/app/node_modules/is-number/package.json": json.dumps({"name": "is-number", "version": "6.0.0",
                                                                       "license": "MIT"}),
        # a lock inside node_modules is ignored (npm ignores it too)
        "rootfs/app/node_modules/is-number/package-lock.json": v3,
    })
    build(root, ctx, "-t", "alp:1", "--sbom=true").check()
    doc = json.loads(lamina(root, "inspect", "--sbom", "alp:1").stdout)["predicate"]
    _validate(doc, tmp_path)
    got = {(p["name"], p["versionInfo"], p.get("licenseDeclared"), p["sourceInfo"],
            p["externalRefs"][0]["referenceLocator"]) for p in doc["packages"] if p.get("externalRefs")}
    apk = "recorded in /lib/apk/db/installed"
    api = "recorded in /srv/api/package-lock.json#"
    assert got == {
        ("alpine-baselayout-data", "3.4.3-r2", "GPL-2.0-only", apk,
         "pkg:apk/alpine/alpine-baselayout-data@3.4.3-r2?arch=x86_64&distro=alpine-3.19.1"),
        ("musl", "1.2.4_git20230717-r4", "MIT", apk,
         "pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64&distro=alpine-3.19.1"),
        ("busybox", "1.36.1-r15", "GPL-2.0-only", apk,
         "pkg:apk/alpine/busybox@1.36.1-r15?arch=x86_64&distro=alpine-3.19.1"),
        # the lock-only project: every non-dev entry (left-pad is dev), the link to the
        # workspace as its folder's entry
        ("@sindresorhus/is", "4.6.0", "MIT", api + "node_modules/@sindresorhus/is", "pkg:npm/%40sindresorhus/is@4.6.0"),
        ("is-number", "6.0.0", "MIT", api + "node_modules/is-number", "pkg:npm/is-number@6.0.0"),
        ("is-number", "7.0.0", "MIT", api + "node_modules/isnum7", "pkg:npm/is-number@7.0.0"),
        ("to-regex-range", "5.0.1", "MIT", api + "node_modules/to-regex-range", "pkg:npm/to-regex-range@5.0.1"),
        ("is-number", "7.0.0", "MIT", api + "node_modules/to-regex-range/node_modules/is-number",
         "pkg:npm/is-number@7.0.0"),
        ("@fixture/util", "0.1.0", "MIT", api + "packages/util", "pkg:npm/%40fixture/util@0.1.0"),
        # /app: the installed tree, once; the lock's other entries are not installed
        ("is-number", "6.0.0", "MIT", "recorded in /app/node_modules/is-number/package.json",
         "pkg:npm/is-number@6.0.0"),
    }


@pytest.mark.root
@pytest.mark.skipif(not (os.environ.get("CI") == "true" or os.environ.get("LAMINA_SLOW_TESTS")),
                    reason="debootstrap base (~2 min): runs in CI, or with LAMINA_SLOW_TESTS=1")
def test_sbom_of_the_python_sample_on_a_debootstrap_base_lists_its_dpkg_packages(tmp_path_factory, tmp_path):
    """samples/python-app on the debootstrap base (the root filesystem tar the
    differential suite makes): every package dpkg-query calls installed, by version;
    and every Python distribution of the image (the app's libraries, from Debian's
    python3-idna and python3-packaging) as the standard library's importlib.metadata
    reads their metadata files out of the same tar."""
    import importlib.metadata
    import re
    from tests.builder.test_differential import DEBIAN_REF, debian_rootfs_tar

    tar = debian_rootfs_tar(tmp_path_factory)
    root = tmp_path / "store"
    assert lamina(root, "import", tar, DEBIAN_REF).code == 0
    ctx = tmp_path / "python-app"
    shutil.copytree(REPO / "samples" / "python-app", ctx)
    build(root, ctx, "-t", "py:1", "--sbom=true").check()
    doc = json.loads(lamina(root, "inspect", "--sbom", "py:1").stdout)["predicate"]
    _validate(doc, tmp_path)
    admin = tmp_path / "dpkg"
    admin.mkdir()
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.lstrip("./") == "var/lib/dpkg/status")
        (admin / "status").write_bytes(tf.extractfile(member).read())
    want = dpkg_query_installed(admin)
    assert len(want) > 50  # a minbase system
    got = {(p["name"], p["versionInfo"]) for p in doc["packages"]
           if any(r["referenceLocator"].startswith("pkg:deb/debian/") for r in p.get("externalRefs", []))}
    assert got == {(name, version) for name, version, _arch in want}

    # the dist-info/egg-info metadata in the tar, read by importlib.metadata (the oracle)
    meta = tmp_path / "meta"
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            found = re.fullmatch(r"(?:.*/)?([^/]+\.(?:dist|egg)-info)/(METADATA|PKG-INFO)", m.name)
            if m.isfile() and found:
                dest = meta / found.group(1) / found.group(2)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(m).read())
    dists = {(d.metadata["Name"], d.version) for d in importlib.metadata.distributions(path=[str(meta)])}
    assert {"idna", "packaging"} <= {n for n, _v in dists}  # the app's libraries, as make-base.sh installs them
    pypi = {(p["name"], p["versionInfo"], p["externalRefs"][0]["referenceLocator"]) for p in doc["packages"]
            if p.get("externalRefs", [{}])[0].get("referenceLocator", "").startswith("pkg:pypi/")}
    # purl: the name normalised as PEP 503 says (runs of -_. to one -, lowercase)
    assert pypi == {(n, v, f"pkg:pypi/{re.sub(r'[-_.]+', '-', n).lower()}@{v}") for n, v in dists}
    # and each is the upstream version of the Debian package that installed it
    dpkg_versions = {name: version for name, version, _arch in want}
    for n, v in dists:
        assert re.sub(r"^\d+:", "", dpkg_versions[f"python3-{n}"]).rsplit("-", 1)[0] == v
