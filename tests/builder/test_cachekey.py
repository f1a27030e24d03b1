"""builder.cachekey: stable, input-sensitive keys and human miss explanations."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.builder.plan.cachekey import (
    SCHEMA, CacheInputs, CacheKey, explain_miss, parent_image, parent_scratch, parent_step,
)

BASE = CacheInputs(
    parent=parent_image("sha256:" + "a" * 64),
    instruction='RUN ["/bin/sh","-c","echo hi"]',
    flags={"network": "none"},
    env={"PATH": "/bin", "GREETING": "hello"},
    args={"GREETING": "hello"},
    user="1000",
    workdir="/app",
    shell=("/bin/sh", "-c"),
    content="sha256:" + "c" * 64,
    files={"app/main.py": "sha256:" + "1" * 64},
    sources={"builder": "k" * 64},
    mounts=('{"type":"cache","target":"/root/.cache"}',),
    network="none",
    platform="linux/amd64",
)

text = st.text(max_size=12)
pair_map = st.dictionaries(st.text(min_size=1, max_size=8), text, max_size=4)
inputs = st.builds(
    CacheInputs, parent=text, instruction=text, flags=pair_map, env=pair_map, args=pair_map,
    user=text, workdir=text, shell=st.lists(text, max_size=3).map(tuple), content=text,
    files=pair_map, sources=pair_map, mounts=st.lists(text, max_size=2).map(tuple),
    network=text, platform=text,
)


def test_key_is_sha256_of_versioned_canonical_encoding():
    data = BASE.canonical()
    assert json.loads(data)["schema"] == SCHEMA
    assert BASE.key() == CacheKey(hashlib.sha256(data).hexdigest())
    assert len(BASE.key().hex) == 64 and str(BASE.key()) == BASE.key().hex


def test_maps_in_any_order_are_the_same_input():
    a = dataclasses.replace(BASE, env={"GREETING": "hello", "PATH": "/bin"})
    b = dataclasses.replace(BASE, env=(("PATH", "/bin"), ("GREETING", "hello")))
    assert a == b == BASE and a.key() == BASE.key()


@settings(max_examples=60, deadline=None)
@given(inputs)
def test_same_inputs_same_key(i):
    clone = CacheInputs.from_json(i.to_json())
    assert clone == i
    assert clone.key() == i.key()


# every labeled input, changed alone, changes the key
CHANGES = {
    "parent": parent_step("f" * 64),
    "instruction": 'RUN ["/bin/sh","-c","echo bye"]',
    "flags": {"network": "host"},
    "env": {"PATH": "/bin", "GREETING": "hello", "X": "1"},
    "args": {"GREETING": "hi"},
    "user": "0",
    "workdir": "/srv",
    "shell": ("/bin/bash", "-c"),
    "content": "sha256:" + "d" * 64,
    "files": {"app/main.py": "sha256:" + "2" * 64},
    "sources": {"builder": "j" * 64},
    "mounts": (),
    "network": "host",
    "platform": "linux/arm64",
    "ulimits": ("nofile=1024:2048",),   # --ulimit, as BuildKit's exec op metadata
}


def test_every_field_is_covered_by_a_change():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(CacheInputs)}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_changing_one_input_changes_the_key(name):
    changed = dataclasses.replace(BASE, **{name: CHANGES[name]})
    assert changed.key() != BASE.key()
    assert explain_miss(BASE, changed) != ""


@settings(max_examples=60, deadline=None)
@given(inputs, inputs)
def test_different_inputs_different_keys(a, b):
    assert (a.key() == b.key()) == (a == b)


def test_field_boundaries_do_not_collide():
    # moving text between fields must not give the same key
    a = CacheInputs(parent="", instruction="ab", user="c")
    b = CacheInputs(parent="", instruction="a", user="bc")
    assert a.key() != b.key()


# ----------------------------------------------------------------- explanations

def test_explain_arg_change():
    now = dataclasses.replace(BASE, args={"GREETING": "hi"}, env={"PATH": "/bin", "GREETING": "hi"})
    assert explain_miss(BASE, now) == 'ARG GREETING changed: "hello" -> "hi"'


def test_explain_instruction_text():
    now = dataclasses.replace(BASE, instruction="RUN x")
    assert explain_miss(BASE, now) == "instruction text changed"


def test_explain_files():
    now = dataclasses.replace(BASE, content="sha256:" + "e" * 64,
                              files={"app/main.py": "sha256:" + "3" * 64, "app/new.py": "x"})
    assert explain_miss(BASE, now) == "file app/main.py changed; file app/new.py added"
    gone = dataclasses.replace(BASE, content="other", files={})
    assert explain_miss(BASE, gone) == "file app/main.py removed"


def test_explain_opaque_content():
    now = dataclasses.replace(BASE, content="sha256:" + "e" * 64)
    assert explain_miss(BASE, now) == "content of the copied files changed"


def test_explain_env_user_workdir_shell_network():
    now = dataclasses.replace(BASE, env={"PATH": "/usr/bin", "GREETING": "hello"}, user="0",
                              workdir="/srv", shell=("/bin/bash", "-c"), network="host")
    reasons = explain_miss(BASE, now, limit=10).split("; ")
    assert reasons == [
        'ENV PATH changed: "/bin" -> "/usr/bin"',
        'USER changed: "1000" -> "0"',
        'WORKDIR changed: "/app" -> "/srv"',
        'network changed: "none" -> "host"',
        "SHELL changed: ['/bin/sh', '-c'] -> ['/bin/bash', '-c']",
    ]


def test_explain_parent_and_base_image():
    step_a = dataclasses.replace(BASE, parent=parent_step("1" * 64))
    step_b = dataclasses.replace(BASE, parent=parent_step("2" * 64))
    assert explain_miss(step_a, step_b) == "previous step changed"
    img = dataclasses.replace(BASE, parent=parent_image("sha256:" + "b" * 64))
    assert explain_miss(BASE, img) == \
        f"base image changed: sha256:{'a' * 64} -> sha256:{'b' * 64}"
    assert "base image changed" in explain_miss(img, dataclasses.replace(BASE, parent=parent_scratch()))


def test_explain_added_removed_args_and_limit():
    now = dataclasses.replace(BASE, args={"NEW": "1"})
    assert explain_miss(BASE, now) == 'ARG GREETING removed (was "hello"); ARG NEW added: "1"'
    many = dataclasses.replace(BASE, instruction="x", user="x", workdir="x", network="x",
                               platform="x", mounts=())
    text = explain_miss(BASE, many, limit=3)
    assert text.endswith("and 3 more") and text.count(";") == 3


def test_explain_first_build_and_same_inputs():
    assert explain_miss(None, BASE) == "not built before"
    assert "no input changed" in explain_miss(BASE, BASE)


# ----------------------------------------------------------------- sealed records

def test_sealed_inputs_hide_every_value_that_can_carry_an_arg():
    secret = "hunter2-secret"
    inputs = dataclasses.replace(BASE, instruction=f"COPY a /{secret}", args={"TOKEN": secret},
                                 env={"PATH": "/bin", "TOKEN": secret}, flags={"chown": secret},
                                 user=secret, workdir=f"/{secret}", mounts=(f"type=cache,id={secret}",))
    sealed = inputs.sealed()
    assert secret not in sealed.to_json()
    assert dict(sealed.args).keys() == {"TOKEN"} and sealed.parent == inputs.parent
    assert sealed.files == inputs.files and sealed.content == inputs.content
    # the same values compare equal through the seal; a fresh salt per record
    assert explain_miss(sealed, inputs) == "no input changed (the cached result is missing)"
    assert inputs.sealed().args != sealed.args
    assert dict(sealed.env)["TOKEN"] != dict(sealed.args)["TOKEN"]  # equal values, unlinkable
    looks_sealed = dataclasses.replace(BASE, args={"A": "sealed:hmac-sha256:00:" + secret})
    assert secret not in looks_sealed.sealed().to_json()
    assert CacheInputs.from_json(sealed.to_json()) == sealed


def test_explain_against_a_sealed_record_names_changes_without_values():
    sealed = BASE.sealed()
    now = dataclasses.replace(BASE, args={"GREETING": "hi", "NEW": "1"}, user="0",
                              instruction="RUN other")
    reasons = explain_miss(sealed, now, limit=10).split("; ")
    assert reasons == ["instruction text changed", "ARG GREETING changed", "ARG NEW added",
                       "USER changed"]
    gone = dataclasses.replace(BASE, args={})
    assert explain_miss(sealed, gone) == "ARG GREETING removed"
    assert "hello" not in explain_miss(sealed, dataclasses.replace(BASE, env={"PATH": "/x"}), limit=10)


@given(st.text(), st.text())
def test_sealed_value_matches_exactly_its_value(a, b):
    from lamina.builder.plan.cachekey import _same, sealed_value

    assert _same(sealed_value("salt", a), a)
    assert _same(sealed_value("salt", a), b) == (a == b)
