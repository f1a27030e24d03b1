"""Image reference normalisation: the rules of docker's reference package
(`ParseNormalizedNamed`, `FamiliarString`) as documented, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.store import refs
from lamina.store.refs import InvalidReference

D = "sha256:" + "ab" * 32

# input -> (canonical full form, familiar form)
NORMALISED = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("user/app/sub", "docker.io/user/app/sub:latest", "user/app/sub:latest"),
    ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/x/y:tag", "localhost:5000/x/y:tag", "localhost:5000/x/y:tag"),
    ("example.com/a/b/c", "example.com/a/b/c:latest", "example.com/a/b/c:latest"),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag",
     "sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
    ("[::1]:5000/repo", "[::1]:5000/repo:latest", "[::1]:5000/repo:latest"),
    # no slash: the first component is the repository, `:8080` its tag
    ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080", "foo_bar.com:8080"),
    ("Uppercase/lowercase:tag", "Uppercase/lowercase:tag", "Uppercase/lowercase:tag"),  # domain
    ("a__b/c-d.e---f:T_a.g-1", "docker.io/a__b/c-d.e---f:T_a.g-1", "a__b/c-d.e---f:T_a.g-1"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"busybox:1@{D}", f"docker.io/library/busybox:1@{D}", f"busybox:1@{D}"),
    (f"localhost:5000/x@{D}", f"localhost:5000/x@{D}", f"localhost:5000/x@{D}"),
]

INVALID = [
    ("", "empty"),
    ("UPPER", "lowercase"),
    ("docker.io/UPPER", "lowercase"),
    ("localhost:5000/Repo", "lowercase"),
    ("ab" * 32, "64-byte hexadecimal"),
    ("-foo", "invalid reference format"),
    ("foo-", "invalid reference format"),
    ("foo___bar", "invalid reference format"),
    ("foo..bar", "invalid reference format"),
    ("a//b", "invalid reference format"),
    ("a:b:c", "invalid reference format"),
    ("repo:-tag", "bad tag"),
    ("repo:.tag", "bad tag"),
    ("repo:" + "t" * 129, "bad tag"),
    ("repo:", "bad tag"),
    ("repo@sha256:abc", "bad digest"),
    ("repo@sha256:" + "A" * 64, "64 lowercase hex"),
    ("repo@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("a b", "whitespace"),
    ("x" * 256, "255 characters"),
    (":tag", "no repository name"),
    ("-host.com/a", "bad registry domain"),
]


@pytest.mark.parametrize("given,canonical,familiar", NORMALISED)
def test_normalisation(given, canonical, familiar):
    r = refs.parse(given)
    assert str(r) == canonical
    assert r.familiar == familiar
    # the canonical form is a fixed point, and familiar round-trips to it
    assert str(refs.parse(canonical)) == canonical
    assert str(refs.parse(familiar)) == canonical


@pytest.mark.parametrize("given,why", INVALID)
def test_invalid(given, why):
    with pytest.raises(InvalidReference) as e:
        refs.parse(given)
    assert why in str(e.value)
    assert "\n" not in str(e.value)


def test_tag_of_128_chars_is_valid():
    assert refs.parse("repo:" + "t" * 128).tag == "t" * 128


def test_parse_tag_refuses_digests():
    with pytest.raises(InvalidReference, match="digest"):
        refs.parse_tag(f"busybox@{D}")
    assert str(refs.parse_tag("app")) == "docker.io/library/app:latest"


def test_familiar_name_and_parts():
    r = refs.parse("localhost:5000/x/y:tag")
    assert (r.domain, r.path, r.tag, r.digest) == ("localhost:5000", "x/y", "tag", None)
    assert refs.parse("docker.io/library/app").familiar_name == "app"
    assert refs.parse("busybox", default_tag=False).tag is None
    assert refs.familiar("docker.io/library/app:1") == "app:1"


@pytest.mark.parametrize("s,yes", [
    ("0123456789ab", True), ("sha256:0123456789ab", True), ("ab" * 32, True),
    ("0123456789a", False), ("0123456789aG", False), ("app", False), ("sha256:", False),
])
def test_looks_like_id(s, yes):
    assert refs.looks_like_id(s) is yes


# no dots: a first component with a dot would be a registry domain
_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:_|__|-+)[a-z0-9]{1,4}){0,2}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(_component, min_size=1, max_size=3),
       st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)))
def test_valid_names_normalise_idempotently(parts, tag):
    name = "/".join(parts)
    ref = name + (f":{tag}" if tag else "")
    r = refs.parse(ref)
    assert refs.parse(str(r)) == r
    assert refs.parse(r.familiar) == r
    assert r.tag == (tag or "latest")
