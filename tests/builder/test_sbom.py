"""The SPDX SBOM (builder.attest.sbom): package database parsers against the formats'
documented shapes, purls against the purl-spec examples, documents validated by
spdx-tools (the SPDX project's own parser and validator), and `build --sbom=true` of
images holding a dpkg status file, Python dist-info/egg-info and npm packages."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import textwrap

import pytest

from lamina.builder.attest.sbom import (Package, parse_apk_installed, parse_dpkg_status, parse_package_json,
                                        parse_python_metadata, purl, spdx_document, spdx_expression)
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
    # a Debian epoch's colon is percent-encoded (purl: the version is percent-encoded)
    assert "@1%3A2.3-1" in purl(Package("deb", "x", "1:2.3-1", None, "/"), {"ID": "debian"})


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


@pytest.mark.root
@pytest.mark.skipif(not (os.environ.get("CI") == "true" or os.environ.get("LAMINA_SLOW_TESTS")),
                    reason="debootstrap base (~2 min): runs in CI, or with LAMINA_SLOW_TESTS=1")
def test_sbom_of_the_python_sample_on_a_debootstrap_base_lists_its_dpkg_packages(tmp_path_factory, tmp_path):
    """samples/python-app on the debootstrap base (the root filesystem tar the
    differential suite makes): every package dpkg-query calls installed, by version."""
    import shutil

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
