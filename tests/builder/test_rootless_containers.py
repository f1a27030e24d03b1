"""Rootless detached containers: `run -d`, then `exec`, `logs`, `stop`, `kill`, `rm` from
later lamina invocations of the same ordinary user. Each rootless lamina lives in a
user namespace; the later ones must reach the container's processes and namespaces
(builder.containers.userns: they join the namespace of a live monitor of the store).
Runs lamina as an unprivileged user exactly as tests/builder/test_rootless.py does
(its fixtures); the expected values are what a root lamina (and docker) gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.builder.test_containers import wait_for
from tests.builder.test_rootless import lamina_as, users, work  # noqa: F401 - fixtures

pytestmark = pytest.mark.root


def _state(store: Path, cid: str) -> dict:
    return json.loads((store / "containers" / cid / "state.json").read_text())


def _user_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/user")


@pytest.fixture
def store(users, work, request):
    """A store of the user's holding `hello:rl` (USER 1000); whatever still runs in it
    afterwards (a failed test) is killed by its monitor's pid, so that the user can
    be deleted."""
    from lamina.builder.containers.state import process_is

    user, _, python = users
    store = work / f"store-{request.node.name[:40]}"
    lamina_as(user, python, "build", "--network", "none", "-t", "hello:rl", str(work / "hello"),
              root=store)
    yield store
    for d in (store / "containers").glob("*/state.json"):
        rec = json.loads(d.read_text())
        for pid, started in ((rec.get("monitor_pid"), rec.get("monitor_start")),
                             (rec.get("init_pid"), rec.get("init_start"))):
            if pid and process_is(pid, started or ""):
                os.kill(pid, 9)


def test_detached_containers_are_reachable_from_later_rootless_calls(users, store):
    user, _, python = users
    # two detached containers from two invocations; the image's USER is 1000 (a
    # subordinate ID outside): signalling it needs lamina's own namespace
    first = lamina_as(user, python, "run", "-d", "--network", "none", "hello:rl",
                      "sh", "-c", "echo started; exec sleep 1000", root=store).stdout.strip()
    second = lamina_as(user, python, "run", "-d", "--network", "none", "--name", "two",
                       "hello:rl", "sleep", "1000", root=store).stdout.strip()
    s1, s2 = _state(store, first), _state(store, second)
    assert s1["status"] == s2["status"] == "running"
    assert _user_ns(s1["monitor_pid"]) == _user_ns(s2["monitor_pid"]) != _user_ns(os.getpid())
    assert os.stat(f"/proc/{s1['init_pid']}").st_uid == user.start + 999   # uid 1000 inside
    assert wait_for(lambda: lamina_as(user, python, "logs", first, root=store).stdout == "started\n")
    ran = lamina_as(user, python, "exec", first, "sh", "-c", "id -u; cat /proc/1/cmdline",
                    root=store)
    assert ran.stdout == "1000\nsleep\x001000\x00"
    assert lamina_as(user, python, "exec", "-u", "0", "two", "id", "-u", root=store).stdout == "0\n"
    failed = lamina_as(user, python, "exec", "two", "sh", "-c", "exit 3", root=store, check=False)
    assert failed.returncode == 3
    # stop: PID 1 ignores SIGTERM (no handler), SIGKILL after the timeout
    assert lamina_as(user, python, "stop", "-t", "1", first, root=store).stdout == first + "\n"
    after = _state(store, first)
    assert after["status"] == "exited" and after["exit_code"] == 137
    assert lamina_as(user, python, "kill", "two", root=store).stdout == "two\n"
    assert wait_for(lambda: _state(store, second)["status"] == "exited")
    ps = lamina_as(user, python, "ps", "-a", "--format", "{{.Status}}", root=store).stdout
    assert [l.split(" ")[:2] for l in ps.splitlines()] == [["Exited", "(137)"]] * 2
    lamina_as(user, python, "rm", first, "two", root=store)
    assert not (store / "containers" / first).exists()
    assert not (store / "containers" / second).exists()
    assert lamina_as(user, python, "ps", "-aq", root=store).stdout == ""
    for st in (s1, s2):
        assert not os.path.exists(f"/proc/{st['monitor_pid']}") or \
            wait_for(lambda: not os.path.exists(f"/proc/{st['monitor_pid']}"))


def test_rm_force_and_a_new_namespace_once_no_container_runs(users, store):
    user, _, python = users
    cid = lamina_as(user, python, "run", "-d", "--network", "none", "hello:rl", "sleep", "1000",
                    root=store).stdout.strip()
    init = _state(store, cid)["init_pid"]
    lamina_as(user, python, "rm", "-f", cid, root=store)
    assert wait_for(lambda: not os.path.exists(f"/proc/{init}"))
    assert not (store / "containers" / cid).exists()
    # nothing runs: a later run makes (and works in) a namespace of its own
    again = lamina_as(user, python, "run", "--rm", "--network", "none", "hello:rl", "id", "-u",
                      root=store)
    assert again.stdout == "1000\n"
