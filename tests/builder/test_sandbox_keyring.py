"""Keyrings (issue 7): a RUN step gets a fresh, empty session keyring and cannot use
the keyctl family at all (docker's seccomp profile denies keyctl, add_key and
request_key), so a key in lamina's own session keyring stays out of its reach."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import secrets

import pytest

from tests.builder.sandboxprobe import parse, probe_layer  # noqa: F401 - fixture
from tests.conftest import IN_CI

KEYCTL = {"x86_64": 250, "aarch64": 219}
ADD_KEY = {"x86_64": 248, "aarch64": 217}
KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_UNLINK = 9
KEYCTL_SEARCH = 10
KEYCTL_READ = 11
KEY_SPEC_SESSION_KEYRING = -3

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _sys(table: dict, *args) -> int:
    machine = platform.machine()
    if machine not in table:
        if IN_CI:
            pytest.fail(f"no keyctl numbers for {machine}")
        pytest.skip(f"no keyctl numbers for {machine}")
    res = libc.syscall(ctypes.c_long(table[machine]), *args)
    if res < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return res


def keyctl(*args) -> int:
    return _sys(KEYCTL, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])


def add_session_key(description: bytes, payload: bytes) -> int:
    return _sys(ADD_KEY, b"user", description, payload, ctypes.c_size_t(len(payload)),
                ctypes.c_long(KEY_SPEC_SESSION_KEYRING))


def in_child(fn) -> dict:
    """Run fn() in a forked child (so that keyring changes never touch pytest's
    process) and return the dict it returns."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001
            result = {"error": repr(exc)}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result


@pytest.mark.root
def test_a_run_cannot_find_or_read_a_key_of_laminas_session(busybox_rootfs, probe_layer,
                                                           run_sandbox):
    description = f"lamina-test-{secrets.token_hex(6)}"
    payload = secrets.token_hex(12)

    def attack() -> dict:
        keyctl(KEYCTL_JOIN_SESSION_KEYRING, None)  # a session of our own, then one key in it
        key = add_session_key(description.encode(), payload.encode())
        # the key is there for lamina's process itself
        assert keyctl(KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, b"user",
                      description.encode(), 0) == key
        code, out, _ = run_sandbox([probe_layer, busybox_rootfs],
                                   ["/probe", f"readkey={description}", "keyctl", "add_key",
                                    "request_key"])
        code2, keys, _ = run_sandbox([busybox_rootfs], ["cat", "/proc/keys"])
        keyctl(KEYCTL_UNLINK, key, KEY_SPEC_SESSION_KEYRING)
        return {"code": code, "out": out.decode(), "keys": keys.decode(errors="replace")}

    result = in_child(attack)
    assert result["code"] == 0, result["out"]
    assert payload not in result["out"], result["out"]
    assert parse(result["out"]) == {"readkey": 1, "keyctl": 1, "add_key": 1, "request_key": 1}, \
        result["out"]
    assert description not in result["keys"]


def test_joining_a_new_session_keyring_leaves_the_old_keys_behind():
    from lamina.builder.sandbox.privileges import join_new_session_keyring

    def check() -> dict:
        keyctl(KEYCTL_JOIN_SESSION_KEYRING, None)
        key = add_session_key(b"lamina-test-old-session", b"secret")
        before = keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        join_new_session_keyring()
        after = keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        buf = ctypes.create_string_buffer(64)
        size = keyctl(KEYCTL_READ, after, buf, 64)  # a keyring reads as its key ids
        try:
            keyctl(KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, b"user", b"lamina-test-old-session", 0)
            found = True
        except OSError:
            found = False
        return {"before": before, "after": after, "size": size, "found": found, "key": key}

    result = in_child(check)
    assert result["before"] != result["after"]
    assert result["size"] == 0
    assert result["found"] is False
