"""Image references: parsing, validation and normalisation as docker does it.

    app                          -> docker.io/library/app:latest   (shown as app:latest)
    user/app:1.0                 -> docker.io/user/app:1.0         (shown as user/app:1.0)
    localhost:5000/x/y:tag       -> localhost:5000/x/y:tag
    name@sha256:<64 hex>         -> docker.io/library/name@sha256:...

The grammar is the one of the distribution `reference` package: lowercase path
components separated by `/`, an optional registry domain (a first component with
a `.` or a `:`, or `localhost`), a tag of at most 128 word characters, dots and
dashes, and an optional digest. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lamina.store.errors import StoreError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_ANCHORED_SHORT_ID = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")


class InvalidReference(StoreError):
    """A string is not a valid image reference."""


@dataclass(frozen=True, order=True)
class Reference:
    """A normalised reference: `domain/path[:tag][@digest]` with the defaults applied."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository name: docker.io/library/app."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as docker shows it: `app`, `user/app`, `localhost:5000/x/y`."""
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            if path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in path[len(OFFICIAL_REPO_PREFIX):]:
                path = path[len(OFFICIAL_REPO_PREFIX):]
            return path
        return self.name

    def __str__(self) -> str:
        """The canonical full form, the key under which tags are stored."""
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """The short form docker prints: `app:latest`, `user/app@sha256:...`."""
        out = self.familiar_name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag format: {tag!r}", ref=tag)
        return Reference(self.domain, self.path, tag, None)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first == first.lower()):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise `ref`. Without tag and digest the tag becomes `latest`
    (unless `default_tag` is false). Raises InvalidReference with the reason."""
    if not isinstance(ref, str) or not ref:
        raise InvalidReference("invalid reference format: empty reference", ref=str(ref))
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidReference(f"invalid reference format: {ref!r} contains whitespace", ref=ref)
    if _HEX64_RE.fullmatch(ref):
        raise InvalidReference(
            f"invalid repository name ({ref}), cannot specify 64-byte hexadecimal strings", ref=ref)

    rest, digest = ref, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid reference format: bad digest {digest!r} in {ref!r}", ref=ref)
        if digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
            raise InvalidReference(
                f"invalid reference format: a sha256 digest has 64 lowercase hex digits: {ref!r}", ref=ref)
        if not digest.startswith("sha256:"):
            raise InvalidReference(f"unsupported digest algorithm in {ref!r} (only sha256)", ref=ref)

    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {ref!r}", ref=ref)

    if not rest:
        raise InvalidReference(f"invalid reference format: no repository name in {ref!r}", ref=ref)
    if len(rest) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters: {ref!r}", ref=ref)

    domain, path = _split_domain(rest)
    if domain != DEFAULT_DOMAIN or rest.startswith((DEFAULT_DOMAIN + "/", LEGACY_DEFAULT_DOMAIN + "/")):
        if not _DOMAIN_RE.fullmatch(domain):
            raise InvalidReference(f"invalid reference format: bad registry domain {domain!r} in {ref!r}",
                                   ref=ref)
    if not _PATH_RE.fullmatch(path):
        if path.lower() != path and _PATH_RE.fullmatch(path.lower()):
            raise InvalidReference(f"invalid reference format: repository name must be lowercase: {ref!r}",
                                   ref=ref)
        raise InvalidReference(f"invalid reference format: {ref!r}", ref=ref)

    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def parse_tag(ref: str) -> Reference:
    """A reference usable as a tag (`name[:tag]`, no digest): the target of
    `tag`, `build -t`, `import`, `load`."""
    r = parse(ref)
    if r.digest is not None:
        raise InvalidReference(f"cannot tag with a digest reference: {ref!r} (use name:tag)", ref=ref)
    return r


def familiar(canonical: str) -> str:
    """The short display form of a canonical stored reference."""
    return parse(canonical, default_tag=False).familiar


def looks_like_id(s: str) -> bool:
    """True when `s` could be an image ID or manifest digest prefix: 12 to 64 hex
    digits, optionally prefixed with `sha256:`."""
    return bool(_ANCHORED_SHORT_ID.fullmatch(s))


def is_digest(s: str) -> bool:
    return bool(_SHA256_RE.fullmatch(s))
