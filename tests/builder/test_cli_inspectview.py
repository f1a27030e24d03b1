"""builder.cli.inspectview and the Go value types of builder.cli.gotemplate: the
inspect object as docker's templates see its Go structs. Expected values: Go's
documented time.Duration.String() examples and docker's output (the differential
test_differential_buildkit.test_cli_views compares with docker itself)."""

from __future__ import annotations

import pytest

from lamina.builder.cli.gotemplate import TemplateError, go_duration, render
from lamina.builder.cli.inspectview import go_time, typed_inspect

NS, US, MS, S, M, H = 1, 1_000, 1_000_000, 1_000_000_000, 60_000_000_000, 3_600_000_000_000


@pytest.mark.parametrize("ns,text", [
    # the examples of Go's time.Duration.String documentation
    (1 * NS, "1ns"), (1100 * NS, "1.1µs"), (2200 * US, "2.2ms"), (3300 * MS, "3.3s"),
    (4 * M + 5 * S, "4m5s"), (4 * M + 5001 * MS, "4m5.001s"), (5 * H + 6 * M + 7001 * MS, "5h6m7.001s"),
    (8 * M + 1 * NS, "8m0.000000001s"), (H + 15 * M + 30 * S + 918273645, "1h15m30.918273645s"),
    (0, "0s"), (H, "1h0m0s"), (90 * S, "1m30s"), (500 * MS, "500ms"), (-3 * S, "-3s"),
])
def test_go_duration(ns, text):
    assert go_duration(ns) == text


def test_go_time():
    assert str(go_time("2026-12-07T21:47:11.765652536Z")) == "2026-12-07T21:47:11.765652536Z"
    assert go_time("2026-12-07T21:47:11.765652536Z").shown == "2026-12-07 21:47:11.765652536 +0000 UTC"
    assert go_time("2026-12-07T21:47:12.156728Z").shown == "2026-12-07 21:47:12.156728 +0000 UTC"
    assert go_time("1970-01-01T00:00:00Z").shown == "1970-01-01 00:00:00 +0000 UTC"
    assert go_time("").shown == "0001-01-01 00:00:00 +0000 UTC"


BARE = {"Id": "sha256:" + "a" * 64, "Config": {}, "RootFS": {"Type": "layers", "Layers": ["sha256:x"]},
        "Metadata": {"LastTagTime": "2026-01-02T03:04:05Z"}}
FULL = {"Config": {"User": "1000:50", "Env": ["A=1"], "ExposedPorts": {"80/udp": {}, "8080/tcp": {}},
                   "Volumes": {"/data": {}}, "Labels": {"k": "v"},
                   "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 90 * S, "Timeout": 500 * MS}}}


@pytest.mark.parametrize("obj,template,out", [
    # an unset field is its Go zero value (docker), not <no value>
    (BARE, "{{.Config.User}}|{{.Config.WorkingDir}}|{{.Config.StopSignal}}", "||"),
    (BARE, "{{.Config.Cmd}} {{.Config.Entrypoint}} {{.Config.Env}} {{.Config.OnBuild}}", "[] [] [] []"),
    (BARE, "{{json .Config.Cmd}} {{json .Config.Labels}}", "null null"),
    (BARE, "{{.Config.Labels}} {{.Config.ExposedPorts}} {{.Config.Volumes}}", "map[] map[] map[]"),
    (BARE, '[{{index .Config.Labels "k"}}]', "[]"),
    (BARE, "{{.Config.Healthcheck}} {{.Config.ArgsEscaped}}", "<nil> false"),
    (BARE, "{{.Metadata}} {{json .Metadata}}", '{2026-01-02 03:04:05 +0000 UTC} {"LastTagTime":"2026-01-02T03:04:05Z"}'),
    (BARE, "{{.RootFS.Layers}} {{.RootFS.Type}}", "[sha256:x] layers"),
    (BARE, "{{json .Config}}", "{}"),
    # set fields: map[string]struct{} values print {}, durations as Go's
    (FULL, "{{.Config.ExposedPorts}} {{.Config.Volumes}}", "map[80/udp:{} 8080/tcp:{}] map[/data:{}]"),
    (FULL, "{{json .Config.ExposedPorts}}", '{"80/udp":{},"8080/tcp":{}}'),
    (FULL, "{{.Config.Healthcheck}}", "{[CMD-SHELL true] 1m30s 500ms 0s 0s 0}"),
    (FULL, "{{json .Config.Healthcheck}}", '{"Test":["CMD-SHELL","true"],"Interval":90000000000,"Timeout":500000000}'),
    (FULL, '{{index .Config.Labels "k"}}{{index .Config.Labels "none"}}', "v"),
    (FULL, "{{range $p, $_ := .Config.ExposedPorts}}{{$p}},{{end}}", "80/udp,8080/tcp,"),
])
def test_typed_inspect_templates(obj, template, out):
    assert render(template, typed_inspect(obj)) == out


def test_undeclared_config_field_is_an_error():
    """docker 20.10's container-only fields (Tty...) are not in current docker's image Config."""
    with pytest.raises(TemplateError, match="can't evaluate field Tty"):
        render("{{.Config.Tty}}", typed_inspect(BARE))
