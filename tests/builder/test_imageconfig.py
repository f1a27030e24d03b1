"""builder.imageconfig: config changes per instruction, history text, value rules.

Expected values come from BuildKit's dockerfile2llb (dispatch* / commitToHistory and
its tests), Go's time package documentation and tests, and the OCI image spec."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.builder.errors import BuildError
from lamina.builder.plan.configvalues import (
    check_signal, go_duration, normalize_workdir, parse_go_duration, parse_healthcheck_interval,
    parse_port_spec, parse_port_specs,
)
from lamina.builder.plan.history import HistoryEntry, created_by, history_entry
from lamina.builder.plan.imageconfig import DEFAULT_PATH, ImageConfig, ImageState, apply
from lamina.grammar.goquote import go_quote
from lamina.builder.plan.resolved import (
    Healthcheck, InlineFile, ResolvedArg, ResolvedCmd, ResolvedCopy, ResolvedEntrypoint,
    ResolvedEnv, ResolvedExpose, ResolvedHealthcheck, ResolvedLabel, ResolvedMaintainer,
    ResolvedOnbuild, ResolvedRun, ResolvedShell, ResolvedStopsignal, ResolvedUser,
    ResolvedVolume, ResolvedWorkdir,
)

S = 1_000_000_000


# ----------------------------------------------------------------- config application

def test_scratch_config_is_buildkits_empty_image():
    cfg = ImageConfig.scratch()
    assert cfg.to_oci_dict() == {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"}
    assert DEFAULT_PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_env_replaces_in_place_and_appends():
    cfg = ImageConfig.scratch()
    cfg = apply(cfg, ResolvedEnv((("A", "1"), ("B", "2"))))
    cfg = apply(cfg, ResolvedEnv((("PATH", "/x"), ("A", "3"))))
    assert cfg.to_oci_dict()["Env"] == ["PATH=/x", "A=3", "B=2"]


def test_label_expose_volume_merge():
    cfg = ImageConfig()
    cfg = apply(cfg, ResolvedLabel((("b", "2"), ("a", "1"))))
    cfg = apply(cfg, ResolvedLabel((("a", "x"),)))
    cfg = apply(cfg, ResolvedExpose(("80/tcp", "53/udp")))
    cfg = apply(cfg, ResolvedExpose(("80/tcp",)))
    cfg = apply(cfg, ResolvedVolume(("/data",)))
    cfg = apply(cfg, ResolvedVolume(("/a", "/data")))
    d = cfg.to_oci_dict()
    assert d["Labels"] == {"a": "x", "b": "2"}
    assert d["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert d["Volumes"] == {"/a": {}, "/data": {}}


def test_cmd_sets_args_escaped_like_buildkit():
    cfg = apply(ImageConfig(), ResolvedCmd(("/app/hello.sh",)))
    assert cfg.to_oci_dict() == {"Cmd": ["/app/hello.sh"], "ArgsEscaped": True}


def test_entrypoint_clears_inherited_cmd():
    base = ImageConfig(cmd=("bash",))
    # base image CMD, ENTRYPOINT in this stage: CMD reset
    assert apply(base, ResolvedEntrypoint(("/init",)), cmd_set=False).cmd is None
    # CMD set earlier in the same stage survives a later ENTRYPOINT
    assert apply(base, ResolvedEntrypoint(("/init",)), cmd_set=True).cmd == ("bash",)


def test_image_state_tracks_cmd_set_within_stage():
    st = ImageState(ImageConfig(cmd=("bash",)))
    after_ep = st.advance(ResolvedEntrypoint(("/e",)))
    assert after_ep.config.cmd is None
    st2 = st.advance(ResolvedCmd(("x",))).advance(ResolvedEntrypoint(("/e",)))
    assert st2.config.cmd == ("x",) and st2.config.entrypoint == ("/e",)


def test_entrypoint_empty_resets():
    cfg = apply(ImageConfig(entrypoint=("/e",)), ResolvedEntrypoint(None))
    assert cfg.entrypoint is None and "Entrypoint" not in cfg.to_oci_dict()


def test_user_workdir_shell_stopsignal_healthcheck_onbuild():
    cfg = ImageConfig()
    cfg = apply(cfg, ResolvedUser("1000:1000"))
    cfg = apply(cfg, ResolvedWorkdir("/app"))
    cfg = apply(cfg, ResolvedShell(("/bin/bash", "-c")))
    cfg = apply(cfg, ResolvedStopsignal("SIGTERM"))
    cfg = apply(cfg, ResolvedHealthcheck(Healthcheck(("CMD-SHELL", "true"), interval=30 * S,
                                                     retries=3)))
    cfg = apply(cfg, ResolvedOnbuild("RUN echo hi"))
    cfg = apply(cfg, ResolvedOnbuild("COPY . /src"))
    d = cfg.to_oci_dict()
    assert d == {
        "User": "1000:1000", "WorkingDir": "/app", "StopSignal": "SIGTERM",
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30 * S, "Retries": 3},
        "OnBuild": ["RUN echo hi", "COPY . /src"], "Shell": ["/bin/bash", "-c"],
    }
    # Go marshals struct fields in declaration order
    assert list(d) == ["User", "WorkingDir", "StopSignal", "Healthcheck", "OnBuild", "Shell"]


def test_maintainer_sets_author_not_config():
    st = ImageState(ImageConfig()).advance(ResolvedMaintainer("Jane <j@x>"))
    assert st.author == "Jane <j@x>" and st.config == ImageConfig()
    assert st.history == (HistoryEntry("MAINTAINER Jane <j@x>", empty_layer=True),)


def test_oci_dict_round_trip_and_unknown_fields_dropped():
    doc = {
        "User": "u", "ExposedPorts": {"80/tcp": {}}, "Env": ["A=1", "B=x=y", "C"],
        "Entrypoint": ["/e"], "Cmd": ["c"], "Volumes": {"/v": {}}, "WorkingDir": "/w",
        "Labels": {"k": "v"}, "StopSignal": "9", "ArgsEscaped": True,
        "Healthcheck": {"Test": ["NONE"]}, "OnBuild": ["RUN x"], "Shell": ["sh", "-c"],
        "Hostname": "", "AttachStdin": False, "Image": "sha256:abc",
    }
    cfg = ImageConfig.from_oci_dict(doc)
    assert cfg.get_env("B") == "x=y" and cfg.get_env("C") == ""
    out = cfg.to_oci_dict()
    for gone in ("Hostname", "AttachStdin", "Image"):
        assert gone not in out
    assert out["Env"] == ["A=1", "B=x=y", "C="]
    assert ImageConfig.from_oci_dict(json.loads(json.dumps(out))) == cfg
    assert ImageConfig.from_oci_dict(None) == ImageConfig()
    assert ImageConfig.from_oci_dict({"Cmd": None, "Env": None}) == ImageConfig()


def test_base_image_env_keeps_order_and_duplicates():
    # BuildKit keeps a base image's Env slice as it is; its addEnv (ENV) replaces the
    # first entry of the key; the RUN environment sees the last one
    cfg = ImageConfig.from_oci_dict({"Env": ["A=1", "B=2", "A=3"]})
    assert cfg.to_oci_dict()["Env"] == ["A=1", "B=2", "A=3"]
    assert cfg.get_env("A") == "3" and cfg.env_dict() == {"A": "3", "B": "2"}
    assert cfg.with_env("A", "9").to_oci_dict()["Env"] == ["A=9", "B=2", "A=3"]


def test_default_path_added_only_when_missing():
    assert ImageConfig().with_default_path().get_env("PATH") == DEFAULT_PATH
    cfg = ImageConfig(env=(("PATH", "/bin"),))
    assert cfg.with_default_path() is cfg


# ----------------------------------------------------------------- history text

def test_history_strings_match_buildkit():
    assert created_by(ResolvedEnv((("A", "b"),))) == "ENV A=b"
    assert created_by(ResolvedEnv((("A", "b"), ("C", "d e")))) == "ENV A=b C=d e"
    assert created_by(ResolvedLabel((("a", "b"),))) == "LABEL a=b"
    assert created_by(ResolvedUser("1000:1000")) == "USER 1000:1000"
    assert created_by(ResolvedWorkdir("/app")) == "WORKDIR /app"
    assert created_by(ResolvedCmd(("/app/hello.sh",))) == 'CMD ["/app/hello.sh"]'
    assert created_by(ResolvedCmd(("/bin/sh", "-c", "echo \"hi\""), True)) == \
        'CMD ["/bin/sh" "-c" "echo \\"hi\\""]'
    assert created_by(ResolvedEntrypoint(("/e", "x"))) == 'ENTRYPOINT ["/e" "x"]'
    assert created_by(ResolvedShell(("/bin/bash", "-c"))) == "SHELL [/bin/bash -c]"
    assert created_by(ResolvedExpose(("80/tcp", "443/tcp"))) == "EXPOSE [80/tcp 443/tcp]"
    assert created_by(ResolvedVolume(("/data",))) == "VOLUME [/data]"
    assert created_by(ResolvedStopsignal("SIGKILL")) == "STOPSIGNAL SIGKILL"
    assert created_by(ResolvedArg((("GREETING", "hello"),))) == "ARG GREETING=hello"
    assert created_by(ResolvedArg((("A", None), ("B", "")))) == "ARG A B="
    assert created_by(ResolvedOnbuild("RUN x")) is None  # BuildKit records none


def test_history_run_and_copy():
    run = ResolvedRun(("/bin/sh", "-c", "echo hi"), shell_form=True)
    assert created_by(run) == "RUN /bin/sh -c echo hi # buildkit"
    # args declared in the stage are listed, with the value the RUN sees
    # (BuildKit issue #915: `RUN |1 CONT_IMG_VER=... /bin/sh -c ...`)
    text = created_by(run, build_args=(("GREETING", "hello"), ("EMPTY", None)),
                      env={"GREETING": "hi"})
    assert text == "RUN |2 GREETING=hi EMPTY= /bin/sh -c echo hi # buildkit"
    exec_run = ResolvedRun(("/bin/busybox", "--install", "-s", "/bin"), shell_form=False)
    assert created_by(exec_run) == "RUN /bin/busybox --install -s /bin # buildkit"
    cp = ResolvedCopy("COPY", ("hello.sh",), ".", "/app/", chmod="755", from_="x")
    assert created_by(cp) == "COPY --chmod=755 hello.sh . # buildkit"
    add = ResolvedCopy("ADD", ("a", "b"), "/d/", "/d/", chown="1:1",
                       inline=(InlineFile("EOF", "x"),))
    assert created_by(add) == "ADD --chown=1:1 a b <<EOF /d/ # buildkit"


def test_history_empty_layer_flags():
    assert history_entry(ResolvedEnv((("A", "b"),))).empty_layer is True
    assert history_entry(ResolvedRun(("true",), False)).empty_layer is False
    assert history_entry(ResolvedCopy("COPY", ("a",), "/", "/")).empty_layer is False
    assert history_entry(ResolvedWorkdir("/app")).empty_layer is False
    assert history_entry(ResolvedWorkdir("/", creates_dir=False)).empty_layer is True
    entry = history_entry(ResolvedUser("u"))
    assert entry.to_oci_dict("1970-01-01T00:00:00Z") == {
        "created": "1970-01-01T00:00:00Z", "created_by": "USER u",
        "comment": "buildkit.dockerfile.v0", "empty_layer": True}


def test_healthcheck_history_is_go_struct_text():
    hc = Healthcheck(("CMD-SHELL", "curl -f http://localhost/ || exit 1"),
                     interval=5 * 60 * S, timeout=3 * S, retries=3)
    assert created_by(ResolvedHealthcheck(hc)) == (
        "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:5m0s "
        "Timeout:3s StartPeriod:0s StartInterval:0s Retries:3}")
    none = Healthcheck(("NONE",))
    assert created_by(ResolvedHealthcheck(none)) == (
        "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s "
        "Retries:0}")


def test_go_quote():
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\there\n") == '"tab\\there\\n"'
    assert go_quote("\x00\x7f") == '"\\x00\\x7f"'
    assert go_quote("héllo ☺") == '"héllo ☺"'


# ----------------------------------------------------------------- durations (Go time)

@pytest.mark.parametrize("ns,text", [
    # from Go's time package tests (durationTests)
    (0, "0s"), (1, "1ns"), (1100, "1.1µs"), (2_200_000, "2.2ms"), (3_300_000_000, "3.3s"),
    (4 * 60 * S + 5 * S, "4m5s"), (4 * 60 * S + 5_001_000_000, "4m5.001s"),
    (5 * 3600 * S + 6 * 60 * S + 7_001_000_000, "5h6m7.001s"),
    (8 * 60 * S + 1, "8m0.000000001s"), (3600 * S, "1h0m0s"), (-1500 * 1_000_000, "-1.5s"),
])
def test_go_duration(ns, text):
    assert go_duration(ns) == text


@pytest.mark.parametrize("text,ns", [
    # from Go's time package tests (parseDurationTests)
    ("0", 0), ("5s", 5 * S), ("30s", 30 * S), ("1478s", 1478 * S), ("-5s", -5 * S),
    ("+5s", 5 * S), ("-0", 0), ("5.0s", 5 * S), ("5.6s", 5600_000_000), ("5.s", 5 * S),
    (".5s", S // 2), ("1.004s", 1_004_000_000), ("10ns", 10), ("11us", 11_000),
    ("12µs", 12_000), ("12μs", 12_000), ("13ms", 13_000_000), ("14s", 14 * S),
    ("15m", 15 * 60 * S), ("16h", 16 * 3600 * S), ("3h30m", 12600 * S),
    ("10.5s4m", 4 * 60 * S + 10_500_000_000), ("1h1m1s1ms", 3661 * S + 1_000_000),
    ("39h9m14.425s", (39 * 3600 + 9 * 60 + 14) * S + 425_000_000),
])
def test_parse_go_duration(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "3000000h"])
def test_parse_go_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(1 << 62), max_value=1 << 62))
def test_duration_print_parse_round_trip(ns):
    assert parse_go_duration(go_duration(ns)) == ns


def test_healthcheck_interval_rules():
    assert parse_healthcheck_interval("interval", "") == 0
    assert parse_healthcheck_interval("interval", "0s") == 0
    assert parse_healthcheck_interval("interval", "1ms") == 1_000_000
    with pytest.raises(BuildError, match='Interval "timeout" cannot be less than 1ms'):
        parse_healthcheck_interval("timeout", "500us")
    with pytest.raises(BuildError, match="invalid duration"):
        parse_healthcheck_interval("interval", "soon")


# ----------------------------------------------------------------- EXPOSE, STOPSIGNAL, WORKDIR

def test_port_specs_from_buildkit_tests():
    assert parse_port_spec("0.0.0.0:1234-1235:3333-3334/tcp") == ["3333/tcp", "3334/tcp"]
    for spec, want in [("[2001:4860:0:2001::68]::333", ["333/tcp"]), ("[::1]:80:80", ["80/tcp"]),
                       ("2001:4860:0:2001::68::333", ["333/tcp"]), ("::1:80:80", ["80/tcp"]),
                       ("::::80", ["80/tcp"])]:
        assert parse_port_spec(spec) == want
    assert parse_port_specs(["1234/tcp", "2345/udp", "3456/sctp"]) == \
        ("1234/tcp", "2345/udp", "3456/sctp")
    assert parse_port_specs(["0.0.0.0:1234:1234/tcp", "2345:2345/udp"]) == ("1234/tcp", "2345/udp")
    assert parse_port_specs(["1234-1236/tcp", "2345-2346/udp"]) == \
        ("1234/tcp", "1235/tcp", "1236/tcp", "2345/udp", "2346/udp")
    assert parse_port_specs(["80", "53/UDP"]) == ("80/tcp", "53/udp")


@pytest.mark.parametrize("spec", ["localhost:1234:1234/tcp", "80/xyz", "/tcp", "70000",
                                  "90-80", "1-2-3", "1000-1002:2000-2005/tcp", "abc"])
def test_port_specs_rejected(spec):
    with pytest.raises(BuildError):
        parse_port_spec(spec)


def test_signals():
    for ok in ("SIGTERM", "sigkill", "KILL", "9", "SIGRTMIN+3", "RTMAX-1", "usr1"):
        assert check_signal(ok) == ok
    for bad in ("0", "SIGFOO", "", "RTMIN+16", "TERM9"):
        with pytest.raises(BuildError, match="invalid signal"):
            check_signal(bad)


@pytest.mark.parametrize("current,path,want", [
    ("/", "/app", "/app"), ("/app", "src", "/app/src"), ("", "rel", "/rel"),
    ("/a/b", "../c", "/a/c"), ("/a", "..", "/"), ("/a", "../../..", "/"), ("/a", ".", "/a"),
    # BuildKit's NormalizeWorkdir: an absolute WORKDIR is stored as written
    ("/a", "/x/./y//z/", "/x/./y//z/"), ("/", "//double", "//double"),
    ("/", "/usr/src/", "/usr/src/"), ("/usr/src/", "app", "/usr/src/app"),
    ("/usr/src/", "", "/usr/src/"), ("", "", "/"),
])
def test_normalize_workdir(current, path, want):
    assert normalize_workdir(current, path) == want
