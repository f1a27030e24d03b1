"""The pure parts of builder.containers: the json-file log records (any bytes round-trip,
`--tail` counts lines), docker's signal names, `-v` and `-e`/`--env-file` parsing, the
state record's JSON form and its liveness rules."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from hypothesis import given, settings, strategies as st

from lamina.builder.containers import logs
from lamina.builder.containers.create import (merge_env, parse_env_file, parse_volume,
                                              signal_number)
from lamina.builder.containers.state import (Container, ContainerError, ContainerStore,
                                             boot_id, process_is, start_time)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.binary(max_size=200)),
                max_size=8))
def test_log_records_round_trip_any_bytes(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("log") / "ctr.log"
    w = logs.LogWriter(path)
    for stream, data in chunks:
        w.write(stream, data)
    w.close()
    records, offset = logs.read_from(path, 0)
    assert offset == path.stat().st_size
    for stream in ("stdout", "stderr"):
        assert b"".join(r.data for r in records if r.stream == stream) == \
            b"".join(d for s, d in chunks if s == stream)
    for r in records:  # one line per record at most, as docker's json-file
        assert b"\n" not in r.data[:-1]


def test_log_file_lines_are_docker_json_file_records(tmp_path):
    w = logs.LogWriter(tmp_path / "l")
    w.write("stderr", b"a\nb")
    w.close()
    lines = (tmp_path / "l").read_bytes().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"log", "stream", "time"}
    assert first["log"] == "a\n" and first["stream"] == "stderr"
    assert first["time"].endswith("Z") and len(first["time"].split(".")[1]) == 10  # 9 digits + Z


def test_reading_stops_at_the_last_whole_line(tmp_path):
    path = tmp_path / "l"
    path.write_bytes(logs.encode("stdout", b"one\n") + b'{"log": "par')
    records, offset = logs.read_from(path, 0)
    assert [r.data for r in records] == [b"one\n"]
    assert offset == len(logs.encode("stdout", b"one\n"))


def test_tail_counts_lines_not_records():
    rec = lambda d, s="stdout": logs.Record(s, d, "t")  # noqa: E731
    records = [rec(b"a\n"), rec(b"b-part "), rec(b"b-end\n"), rec(b"c\n", "stderr")]
    assert logs.tail(records, 1) == records[3:]
    assert logs.tail(records, 2) == records[1:]
    assert logs.tail(records, 10) == records
    assert logs.tail(records, 0) == []
    assert logs.tail(records, None) == records


def test_signal_names_as_docker_takes_them():
    assert signal_number("SIGUSR1") == signal.SIGUSR1
    assert signal_number("usr1") == signal.SIGUSR1
    assert signal_number("9") == 9
    assert signal_number(15) == 15
    for bad in ("SIGNOPE", "0", "999", ""):
        with pytest.raises(ContainerError):
            signal_number(bad)


def test_volume_specs(tmp_path):
    assert parse_volume(f"{tmp_path}:/data") == (str(tmp_path), "/data", False)
    assert parse_volume(f"{tmp_path}:/data/:ro") == (str(tmp_path), "/data", True)
    for bad in ("named:/data", f"{tmp_path}:relative", f"{tmp_path}:/d:rx",
                f"{tmp_path}/missing:/d", "/a:/b:/c:ro"):
        with pytest.raises(ContainerError):
            parse_volume(bad)


def test_environment_merging_and_env_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "h")
    f = tmp_path / "env"
    f.write_text("# comment\n\nA=1\n  B=two words\nFROM_HOST\nUNSET_ONE\n")
    assert parse_env_file(str(f)) == ["A=1", "B=two words", "FROM_HOST=h"]
    assert merge_env(["PATH=/bin", "A=0"], ["A=1", "C="]) == ["PATH=/bin", "A=1", "C="]
    with pytest.raises(ContainerError):
        parse_env_file(str(tmp_path / "missing"))


def test_state_record_round_trips_and_is_written_atomically(tmp_path):
    cs = ContainerStore(tmp_path)
    c = Container(id=cs.new_id(), name="n1", image="img", image_id="sha256:1", manifest="sha256:2",
                  argv=("sh", "-c", "x"), volumes=(("/h", "/c", True),), tty_size=(24, 80),
                  created=time.time(), ulimits=("nofile=100:200",))
    cs.create(c)
    assert cs.read(c.id) == c
    assert not [p for p in os.listdir(cs.path(c.id)) if p.endswith(".tmp")]
    with pytest.raises(ContainerError, match="already in use"):
        cs.create(Container(id=cs.new_id(), name="n1", image="i", image_id="", manifest="",
                            argv=("x",)))
    with pytest.raises(ContainerError, match="invalid container name"):
        cs.create(Container(id=cs.new_id(), name="bad/name", image="i", image_id="",
                            manifest="", argv=("x",)))
    assert cs.find(c.id[:5]).id == c.id and cs.find("n1").id == c.id
    with pytest.raises(ContainerError, match="No such container"):
        cs.find("zzz")


def test_liveness_needs_pid_start_time_and_boot(tmp_path):
    me = os.getpid()
    assert process_is(me, start_time(me))
    assert not process_is(me, "1")            # a recycled pid has another start time
    assert not process_is(0, "")
    cs = ContainerStore(tmp_path)
    c = Container(id=cs.new_id(), name="", image="i", image_id="", manifest="", argv=("x",),
                  status="running", boot_id=boot_id(), monitor_pid=me,
                  monitor_start=start_time(me), created=time.time())
    cs.create(c)
    assert cs.reconcile(cs.read(c.id)).status == "running"
    cs.update(c.id, monitor_start="1")
    gone = cs.reconcile(cs.read(c.id))
    assert (gone.status, gone.exit_code) == ("exited", 137)
    cs.update(c.id, status="running", boot_id="another-boot", monitor_start=start_time(me))
    rebooted = cs.reconcile(cs.read(c.id))
    assert (rebooted.status, rebooted.exit_code) == ("exited", 255)


def test_rootless_container_commands_pick_a_live_monitor_to_join(tmp_path):
    import subprocess

    from lamina.builder.containers.userns import namespace_to_join

    cs = ContainerStore(tmp_path)
    assert namespace_to_join(tmp_path, "exec", ["exec", "x", "sh"]) is None   # no containers
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        me, other = os.getpid(), sleeper.pid
        for name, pid, started in (("mine", me, 2.0), ("other", other, 1.0), ("dead", me, 3.0)):
            cs.create(Container(id=cs.new_id(), name=name, image="i", image_id="", manifest="",
                                argv=("x",), status="running", boot_id=boot_id(), monitor_pid=pid,
                                monitor_start=start_time(pid) if name != "dead" else "1",
                                started=started, created=started))
        other_id = cs.find("other").id
        # a named container's monitor, by name or ID prefix; else the newest live one
        assert namespace_to_join(tmp_path, "stop", ["stop", "other"]) == other
        assert namespace_to_join(tmp_path, "exec", ["exec", other_id[:6], "sh"]) == other
        assert namespace_to_join(tmp_path, "run", ["run", "-d", "img"]) == me
        assert namespace_to_join(tmp_path, "build", ["build", "."]) is None  # not a container command
        assert namespace_to_join(tmp_path, "images", ["images"]) is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert namespace_to_join(tmp_path, "stop", ["stop", "other"]) == me  # its monitor is gone
