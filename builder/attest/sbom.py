"""The SBOM of an image: an SPDX 2.3 JSON document of the packages its final root
filesystem records.

Package databases read (pure parsers, one per format):
- Debian/Ubuntu: /var/lib/dpkg/status (installed packages only; dpkg records no
  license, so those are NOASSERTION);
- Alpine: /lib/apk/db/installed (its `L:` license field);
- Python: every `*.dist-info/METADATA` and `*.egg-info` (PKG-INFO), anywhere
  (License-Expression, else License);
- npm: every `node_modules/<name>/package.json` and `node_modules/@scope/<name>/...`;
  and a project's `package-lock.json` (or `npm-shrinkwrap.json`, which npm prefers
  when both are there) when no `node_modules` directory sits beside it — an image
  that ships the lock file but installs at start, or keeps it as the record.
  lockfileVersion 2 and 3: the `packages` map (keys `node_modules/...`, an alias's
  real name from its `name`; the root `""` and `link` entries skipped — a link's
  target is its own entry, e.g. a workspace folder); lockfileVersion 1: the nested
  `dependencies` tree (`npm:NAME@VERSION` aliases resolved; `file:` entries skipped:
  v1 records no version for a local folder or tarball). Entries marked `dev` are
  left out, as syft (BuildKit's SBOM scanner) does by default: a production image
  is built with `npm ci --omit=dev`. When `node_modules` is there, the installed
  tree is what the image holds and the lock adds nothing: its entries not installed
  (another platform's optional packages, pruned ones) are not in the image, and the
  installed ones are listed once, from their package.json. Lock files under a
  `node_modules` directory are ignored, as npm ignores them.

Each package has its purl (pkg:deb/debian/NAME@VERSION?arch=..&distro=debian-12,
pkg:apk/alpine/NAME@VERSION?arch=..&distro=alpine-3.19.1 — the namespace is the
vendor, os-release's ID, and the distro qualifier names the release as the
purl-spec apk type's repository note asks —, pkg:pypi/..., pkg:npm/%40scope/name@...;
names lowercased where the purl-spec type says so). A declared license that is an SPDX
expression of known identifiers is kept as it is; any other text becomes a
`LicenseRef-` with the text in hasExtractedLicensingInfos, so the document always
validates.

Why plain JSON and not the `spdx-tools` library: the document is small and fixed in
shape, its bytes must be deterministic (the image's SOURCE_DATE_EPOCH is its
creation time, packages are sorted), and spdx-tools pulls in rdflib, ply, beartype
and more at run time for no gain here. The tests validate the output with
spdx-tools' own parser and validator.

The root filesystem is the image's merged overlay view (mounted read-only in a
private mount namespace, as `--output type=local` does); files are read through
builder.sandbox.rootpath (symlinks resolved inside the root, never the host's).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

SPDX_VERSION = "SPDX-2.3"
MAX_METADATA_BYTES = 4 << 20
MAX_DATABASE_BYTES = 64 << 20      # one dpkg/apk database or npm lock file
MAX_JSON_CONTAINERS = 4_000_000    # objects + arrays of one JSON file (~250 MB parsed)
MAX_SCAN_BYTES = 1 << 30           # all the files one scan reads together


@dataclass(frozen=True)
class Package:
    kind: str            # deb | apk | pypi | npm
    name: str
    version: str
    license: str | None  # as declared, free text
    location: str        # where in the image it is recorded
    arch: str | None = None
    supplier: str | None = None


# -- parsers (pure) ------------------------------------------------------------------------

def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, one at a time (a 64 MiB database is not split into a list
    of millions of strings at once)."""
    for line in io.StringIO(text, newline=""):
        yield line.rstrip("\r\n")


def _paragraphs(text: str) -> Iterable[dict[str, str]]:
    """RFC 822-style paragraphs (dpkg status): fields, continuation lines folded.
    Linear in the text: continuation lines are gathered in a list and joined once
    (appending to a growing string is quadratic: a hostile image's status file)."""
    fields: dict[str, list[str]] = {}
    last = None
    for line in _lines(text):
        if not line.strip():
            if fields:
                yield {k: "\n".join(v) for k, v in fields.items()}
            fields, last = {}, None
            continue
        if line[0] in " \t" and last is not None:
            fields[last].append(line.strip())
            continue
        key, sep, value = line.partition(":")
        if sep:
            last = key.strip()
            fields[last] = [value.strip()]
    if fields:
        yield {k: "\n".join(v) for k, v in fields.items()}


def parse_dpkg_status(text: str, location: str = "/var/lib/dpkg/status") -> list[Package]:
    out = []
    for p in _paragraphs(text):
        status = p.get("Status", "").split()
        if not p.get("Package") or not p.get("Version") or status[-1:] != ["installed"]:
            continue
        out.append(Package("deb", p["Package"], p["Version"], None, location, p.get("Architecture"),
                           p.get("Maintainer")))
    return out


def parse_apk_installed(text: str, location: str = "/lib/apk/db/installed") -> list[Package]:
    out = []
    fields: dict[str, str] = {}
    for line in itertools.chain(_lines(text), [""]):  # a blank line ends a package
        if not line.strip():
            if fields.get("P") and fields.get("V"):
                out.append(Package("apk", fields["P"], fields["V"], fields.get("L") or None, location,
                                   fields.get("A"), fields.get("m")))
            fields = {}
        elif len(line) > 2 and line[1] == ":":
            fields.setdefault(line[0], line[2:])
    return out


def parse_python_metadata(text: str, location: str) -> Package | None:
    """A Python distribution's METADATA / PKG-INFO (email headers)."""
    msg = HeaderParser().parsestr(text, headersonly=True)
    name, version = msg.get("Name"), msg.get("Version")
    if not name or not version:
        return None
    lic = msg.get("License-Expression") or msg.get("License")
    if lic:
        lic = lic.strip().splitlines()[0].strip() if lic.strip() else None
    if not lic or lic.upper() == "UNKNOWN":
        classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or []
                       if c.startswith("License ::")]
        lic = classifiers[0] if classifiers else None
    return Package("pypi", name.strip(), version.strip(), lic, location,
                   supplier=(msg.get("Author") or "").strip() or None)


def _json(text: str) -> Any:
    """`text` parsed as JSON, or None when it is not JSON or is hostile: nested deeper
    than Python's recursion allows (RecursionError), or holding more objects/arrays
    than MAX_JSON_CONTAINERS (each costs ~60 bytes of memory from 2 bytes of text:
    a 64 MiB file of `{},` would take gigabytes). The count is taken on the raw text,
    brackets inside strings included, so it can only err on the side of skipping."""
    if text.count("{") + text.count("[") > MAX_JSON_CONTAINERS:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_package_json(text: str, location: str) -> Package | None:
    doc = _json(text)
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not isinstance(doc.get("version"), str):
        return None
    lic = doc.get("license")
    if isinstance(lic, dict):
        lic = lic.get("type")
    if lic is None and isinstance(doc.get("licenses"), list):
        types = [l.get("type") for l in doc["licenses"] if isinstance(l, dict) and isinstance(l.get("type"), str)]
        lic = " OR ".join(types) if types else None
    return Package("npm", doc["name"], doc["version"], lic if isinstance(lic, str) else None, location)


NPM_LOCK_FILES = ("npm-shrinkwrap.json", "package-lock.json")  # npm's order of preference


def _lock_key_name(key: str) -> str | None:
    """The package name a `packages` key installs: what follows its last
    `node_modules/` (`node_modules/a/node_modules/@s/b` -> `@s/b`)."""
    if "node_modules/" not in key:
        return None
    return key.rpartition("node_modules/")[2] or None


def parse_package_lock(text: str, location: str) -> list[Package]:
    """The packages of an npm lock file (package-lock.json / npm-shrinkwrap.json),
    each located at `LOCATION#KEY` where KEY is its folder relative to the project
    (`node_modules/a/node_modules/b`). Dev-only entries are left out."""
    doc = _json(text)
    if not isinstance(doc, dict):
        return []
    out: list[Package] = []
    packages = doc.get("packages")
    if isinstance(packages, dict):  # lockfileVersion 2/3: npm >= 7 reads only this when present
        for key, entry in sorted(packages.items()):
            if not key or not isinstance(entry, dict) or entry.get("link") or entry.get("dev"):
                continue
            name = entry.get("name") if isinstance(entry.get("name"), str) else _lock_key_name(key)
            version = entry.get("version")
            if not name or not isinstance(version, str) or not version:
                continue
            lic = entry.get("license")
            out.append(Package("npm", name, version, lic if isinstance(lic, str) else None, f"{location}#{key}"))
        return out

    def walk(deps: Any, prefix: str, depth: int) -> None:  # lockfileVersion 1
        if not isinstance(deps, dict) or depth > 256:
            return
        for name, entry in sorted(deps.items()):
            if not isinstance(entry, dict):
                continue
            key = f"{prefix}node_modules/{name}"
            version = entry.get("version")
            real = name
            if isinstance(version, str) and version.startswith("npm:"):
                real, _, version = version[4:].rpartition("@")
            if not entry.get("dev") and real and isinstance(version, str) and version \
                    and not version.startswith("file:"):
                out.append(Package("npm", real, version, None, f"{location}#{key}"))
            walk(entry.get("dependencies"), key + "/", depth + 1)

    walk(doc.get("dependencies"), "", 0)
    return out


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip().strip('"').strip("'")
    return out


# -- purls and licenses (pure) ----------------------------------------------------------

def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _distro_purl(kind: str, vendor: str, name: str, p, osr: dict) -> str:
    """A distribution package's purl: pkg:KIND/VENDOR/NAME@VERSION?arch=..&distro=VENDOR-VERSION_ID."""
    q = []
    if p.arch:
        q.append(f"arch={_q(p.arch)}")
    if osr.get("VERSION_ID"):
        q.append(f"distro={_q(vendor + '-' + osr['VERSION_ID'])}")
    return f"pkg:{kind}/{_q(vendor)}/{_q(name)}@{_q(p.version)}" + ("?" + "&".join(q) if q else "")


def purl(p: Package, os_release: Mapping[str, str] | None = None) -> str:
    osr = os_release or {}
    if p.kind == "deb":
        return _distro_purl("deb", osr.get("ID", "debian"), p.name, p, osr)
    if p.kind == "apk":
        return _distro_purl("apk", (osr.get("ID") or "alpine").lower(), p.name.lower(), p, osr)
    if p.kind == "pypi":
        return f"pkg:pypi/{_q(re.sub(r'[-_.]+', '-', p.name).lower())}@{_q(p.version)}"
    if p.kind == "npm":
        name = p.name.lower()
        if name.startswith("@") and "/" in name:
            scope, name = name.split("/", 1)
            return f"pkg:npm/{_q(scope)}/{_q(name)}@{_q(p.version)}"
        return f"pkg:npm/{_q(name)}@{_q(p.version)}"
    raise ValueError(p.kind)


# Common SPDX license identifiers (spdx.org/licenses); anything else becomes a LicenseRef.
KNOWN_LICENSES = frozenset("""
0BSD AFL-2.1 AFL-3.0 AGPL-3.0 AGPL-3.0-only AGPL-3.0-or-later Apache-1.1 Apache-2.0 APSL-2.0
Artistic-1.0 Artistic-1.0-Perl Artistic-2.0 Beerware BlueOak-1.0.0 BSD-1-Clause BSD-2-Clause
BSD-2-Clause-Patent BSD-3-Clause BSD-3-Clause-Clear BSD-4-Clause BSL-1.0 bzip2-1.0.6 CC-BY-3.0
CC-BY-4.0 CC-BY-SA-3.0 CC-BY-SA-4.0 CC0-1.0 CDDL-1.0 CDDL-1.1 curl EPL-1.0 EPL-2.0 EUPL-1.2
FTL GFDL-1.2-only GFDL-1.2-or-later GFDL-1.3-only GFDL-1.3-or-later GPL-1.0-only GPL-1.0-or-later
GPL-2.0 GPL-2.0-only GPL-2.0-or-later GPL-3.0 GPL-3.0-only GPL-3.0-or-later HPND ICU IJG ISC
LGPL-2.0-only LGPL-2.0-or-later LGPL-2.1 LGPL-2.1-only LGPL-2.1-or-later LGPL-3.0 LGPL-3.0-only
LGPL-3.0-or-later libpng-2.0 Libpng MIT MIT-0 MIT-CMU MPL-1.1 MPL-2.0 MPL-2.0-no-copyleft-exception
MS-PL NCSA OFL-1.1 OpenSSL PHP-3.01 PostgreSQL PSF-2.0 Python-2.0 Ruby Sleepycat TCL Unicode-3.0
Unicode-DFS-2016 Unlicense UPL-1.0 Vim W3C WTFPL X11 Zlib ZPL-2.1
""".split())
KNOWN_EXCEPTIONS = frozenset("Classpath-exception-2.0 GCC-exception-3.1 LLVM-exception "
                             "OpenSSL-exception Autoconf-exception-3.0 Bison-exception-2.2".split())
_KNOWN_LOWER = {l.lower(): l for l in KNOWN_LICENSES}


def spdx_expression(text: str | None) -> str | None:
    """`text` as a valid SPDX license expression of known identifiers (case fixed),
    or None when it is not one."""
    if not text:
        return None
    tokens = re.findall(r"\(|\)|[^\s()]+", text.strip())
    out, expect_id, depth = [], True, 0
    for i, t in enumerate(tokens):
        up = t.upper()
        if t == "(":
            if not expect_id:
                return None
            depth += 1
            out.append(t)
        elif t == ")":
            if expect_id or depth == 0:
                return None
            depth -= 1
            out.append(t)
        elif up in ("AND", "OR"):
            if expect_id:
                return None
            out.append(up)
            expect_id = True
        elif up == "WITH":
            if expect_id or i + 1 >= len(tokens) or tokens[i + 1] not in KNOWN_EXCEPTIONS:
                return None
            out.append("WITH")
        elif out and out[-1] == "WITH":
            out.append(t)
        else:
            if not expect_id:
                return None
            base = t[:-1] if t.endswith("+") else t
            known = _KNOWN_LOWER.get(base.lower())
            if known is None:
                return None
            out.append(known + ("+" if t.endswith("+") else ""))
            expect_id = False
    if expect_id or depth:
        return None
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def _license_ref(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:40] or "license"
    return f"LicenseRef-{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _spdx_id(kind: str, p: Package) -> str:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", p.name).strip("-")[:60] or "package"
    h = hashlib.sha256(f"{p.kind}\0{p.name}\0{p.version}\0{p.location}".encode()).hexdigest()[:12]
    return f"SPDXRef-Package-{kind}-{slug}-{h}"


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def spdx_document(packages: Iterable[Package], *, name: str, created_epoch: int, tool_version: str,
                  os_release: Mapping[str, str] | None = None, image_digest: str | None = None) -> dict[str, Any]:
    """The SPDX 2.3 document (a dict) of an image holding `packages`. Deterministic:
    packages sorted, created = the image's epoch, the namespace a hash of the content."""
    pkgs = sorted(set(packages), key=lambda p: (p.kind, p.name, p.version, p.location))
    extracted: dict[str, str] = {}
    entries = []
    for p in pkgs:
        entry: dict[str, Any] = {
            "SPDXID": _spdx_id(p.kind, p), "name": p.name, "versionInfo": p.version,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION", "sourceInfo": f"recorded in {p.location}",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl(p, os_release)}],
        }
        expr = spdx_expression(p.license)
        if expr is not None:
            entry["licenseDeclared"] = expr
        elif p.license:
            ref = _license_ref(p.license)
            extracted[ref] = p.license
            entry["licenseDeclared"] = ref
        if p.supplier:
            entry["supplier"] = "Organization: " + " ".join(p.supplier.split())[:200]
        entries.append(entry)
    image = {"SPDXID": "SPDXRef-Image", "name": name, "downloadLocation": "NOASSERTION",
             "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER"}
    if image_digest:
        image["checksums"] = [{"algorithm": "SHA256", "checksumValue": image_digest.split(":", 1)[1]}]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": "SPDXRef-Image"}]
    relationships += [{"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS",
                       "relatedSpdxElement": e["SPDXID"]} for e in entries]
    content = json.dumps([name, image_digest, entries], sort_keys=True).encode()
    doc: dict[str, Any] = {
        "spdxVersion": SPDX_VERSION, "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sbom-{name}",
        "documentNamespace": f"https://lamina.invalid/spdx/{hashlib.sha256(content).hexdigest()}",
        "creationInfo": {"created": _rfc3339(created_epoch), "creators": [f"Tool: lamina-{tool_version}"]},
        "packages": [image] + entries,
        "relationships": relationships,
    }
    if extracted:
        doc["hasExtractedLicensingInfos"] = [{"licenseId": k, "extractedText": v, "name": v}
                                             for k, v in sorted(extracted.items())]
    return doc


# -- scanning a root filesystem ------------------------------------------------------------

_SKIP_TOP = {"proc", "sys", "dev"}


def scan_root(root: Path) -> tuple[list[Package], dict[str, str]]:
    """(packages, os-release fields) of the root filesystem at `root` (a directory
    standing for an image's /)."""
    from lamina.builder.sandbox.rootpath import RootDir, RootPathError

    from lamina.builder.errors import BuildError

    root = Path(root)
    packages: list[Package] = []
    budget = [MAX_SCAN_BYTES]
    with RootDir(root) as r:
        def text(path: str) -> str | None:
            big = path.endswith(("/status", "/installed") + NPM_LOCK_FILES)  # databases, lock files
            data = r.read_file(path, max_bytes=MAX_DATABASE_BYTES if big else MAX_METADATA_BYTES)
            if data is None:
                return None
            # symlinks make one big file readable from many places: a bounded scan fails
            # rather than leave packages out of the SBOM without a word
            budget[0] -= len(data)
            if budget[0] < 0:
                raise BuildError(f"SBOM: the image's package records (read up to {path}) add up to "
                                 f"more than {MAX_SCAN_BYTES} bytes; not scanned further")
            return data.decode("utf-8", "replace")

        def scope_names(image_dir: str) -> list[str]:
            """The entries of an @scope folder, symlinks resolved inside the root (never
            the host's directory a `@scope -> /root` names)."""
            try:
                fd = r.open_dir(image_dir)
            except (RootPathError, OSError):
                return []
            try:
                return sorted(os.listdir(fd))
            except OSError:
                return []
            finally:
                os.close(fd)

        osr = parse_os_release(text("/etc/os-release") or text("/usr/lib/os-release") or "")
        status = text("/var/lib/dpkg/status")
        if status:
            packages += parse_dpkg_status(status)
        apk = text("/lib/apk/db/installed")
        if apk:
            packages += parse_apk_installed(apk)
        locks: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            image_dir = "/" if rel == "." else "/" + rel
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in _SKIP_TOP]
            dirnames.sort()
            for d in dirnames:
                full = os.path.join(image_dir, d)
                if d.endswith(".dist-info"):
                    t = text(full + "/METADATA")
                    pkg = parse_python_metadata(t, full) if t else None
                    if pkg:
                        packages.append(pkg)
                elif d.endswith(".egg-info"):
                    t = text(full + "/PKG-INFO")
                    pkg = parse_python_metadata(t, full) if t else None
                    if pkg:
                        packages.append(pkg)
            if "node_modules" not in rel.split(os.sep):
                lock = next((f for f in NPM_LOCK_FILES if f in filenames), None)
                if lock and "node_modules" not in dirnames:
                    locks.append(os.path.join(image_dir, lock))
            for f in filenames:
                if f.endswith(".egg-info"):
                    full = os.path.join(image_dir, f)
                    t = text(full)
                    pkg = parse_python_metadata(t, full) if t else None
                    if pkg:
                        packages.append(pkg)
            if os.path.basename(dirpath) == "node_modules":
                for d in dirnames:
                    names = [d]
                    if d.startswith("@"):
                        names = [f"{d}/{s}" for s in scope_names(os.path.join(image_dir, d))]
                    for n in names:
                        loc = os.path.join(image_dir, n, "package.json")
                        t = text(loc)
                        pkg = parse_package_json(t, loc) if t else None
                        if pkg:
                            packages.append(pkg)
        for lock in locks:
            t = text(lock)
            if t:
                packages += parse_package_lock(t, lock)
    return packages, osr


def image_sbom(store, image, *, epoch: int, name: str) -> dict[str, Any]:
    """The SPDX document of a stored image (its merged root mounted read-only in a
    private mount namespace, scanned there)."""
    from lamina.builder.cli.version import lamina_version
    from lamina.builder.sandbox.mountedroot import run_in_namespace
    from lamina.builder.sandbox.overlay import mount_overlay_readonly
    from lamina.store.locks import remove_tree

    lowers = tuple(store.layer_dir(l.diff_id) for l in reversed(image.layers))
    scratch = store.temp_path("sbom")
    scratch.mkdir()

    def work():
        view = scratch / "view"
        view.mkdir()
        mount_overlay_readonly(lowers, view, scratch)
        return scan_root(view)

    try:
        packages, osr = run_in_namespace(work)
    finally:
        remove_tree(scratch)
    return spdx_document(packages, name=name, created_epoch=epoch, tool_version=lamina_version(),
                         os_release=osr, image_digest=image.manifest_digest)
