"""`lamina inspect -f TEMPLATE`'s object typed as docker's: the image inspect object
runs through templates as docker's Go structs do, so a field the image does not set
gives its Go zero value instead of `<no value>` - `{{.Config.User}}` is "", `{{.Config.Cmd}}`
`[]`, `{{index .Config.Labels "k"}}` "" on an image without labels (docker; lamina
failed with "index of untyped nil"), `{{.Config.ExposedPorts}}` `map[80/tcp:{}]`,
`{{.Config.Healthcheck}}` `{[CMD-SHELL true] 5s 0s 0s 0s 0}` (durations as Go prints
them), `{{.Metadata.LastTagTime}}` as Go's Time.String().

The Config fields are those of current docker's image Config (API 1.50's
DockerOCIImageConfig: the OCI image config's fields, Healthcheck, OnBuild, Shell); a
field it does not have (docker 20.10's Tty, Hostname...) is an error there and here.
The JSON (`inspect` without -f, `{{json .Config}}`) is unchanged: what is not set is
omitted, as current docker's omitempty fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from lamina.builder.cli.gotemplate import GoDuration, GoMap, GoNilSlice, GoStruct, GoTime

_EMPTY_STRUCT_TYPE = "struct {}"


def _empty_struct() -> GoStruct:
    return GoStruct(_EMPTY_STRUCT_TYPE, {})


def _set_of(value: Any) -> GoMap:
    """A map[string]struct{} (ExposedPorts, Volumes)."""
    if not isinstance(value, Mapping):
        return GoMap(zero=_empty_struct(), nil=True)
    return GoMap({k: _empty_struct() for k in value}, zero=_empty_struct(), nil=False)


HEALTH_FIELDS = {"Test": GoNilSlice(), "Interval": GoDuration(0), "Timeout": GoDuration(0),
                 "StartPeriod": GoDuration(0), "StartInterval": GoDuration(0), "Retries": 0}


def _healthcheck(value: Any) -> GoStruct | None:
    if not isinstance(value, Mapping):
        return None
    out = {}
    for k, v in value.items():
        out[k] = GoDuration(v) if isinstance(HEALTH_FIELDS.get(k), GoDuration) and isinstance(v, int) else v
    return GoStruct("*container.HealthConfig", HEALTH_FIELDS, out)


CONFIG_FIELDS = {"User": "", "ExposedPorts": GoMap(zero=_empty_struct(), nil=True), "Env": GoNilSlice(),
                 "Entrypoint": GoNilSlice(), "Cmd": GoNilSlice(), "Volumes": GoMap(zero=_empty_struct(), nil=True),
                 "WorkingDir": "", "Labels": GoMap(zero="", nil=True), "StopSignal": "", "ArgsEscaped": False,
                 "Healthcheck": None, "OnBuild": GoNilSlice(), "Shell": GoNilSlice()}


def _config(config: Any) -> GoStruct:
    values = dict(config) if isinstance(config, Mapping) else {}
    for k in ("ExposedPorts", "Volumes"):
        if k in values:
            values[k] = _set_of(values[k])
    if isinstance(values.get("Labels"), Mapping):
        values["Labels"] = GoMap(values["Labels"], zero="")
    if "Healthcheck" in values:
        values["Healthcheck"] = _healthcheck(values["Healthcheck"])
    return GoStruct("*dockerspec.DockerOCIImageConfig", CONFIG_FIELDS, values)


_ZERO_TIME = GoTime("0001-01-01T00:00:00Z", "0001-01-01 00:00:00 +0000 UTC")


def go_time(text: Any) -> GoTime:
    """An RFC 3339 time (as inspect's JSON holds it) with Go's Time.String() form."""
    if not isinstance(text, str) or not text:
        return _ZERO_TIME
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return GoTime(text, text)
    frac = ""
    m = text.split(".", 1)
    if len(m) == 2:  # the fraction as written (up to ns), trailing zeros dropped as Go does
        digits = "".join(ch for ch in m[1] if ch.isdigit())[:9].rstrip("0")
        frac = "." + digits if digits else ""
    offset = t.strftime("%z") or "+0000"
    zone = "UTC" if offset == "+0000" else offset[:3]
    return GoTime(text, t.strftime("%Y-%m-%d %H:%M:%S") + frac + f" {offset} {zone}")


def typed_inspect(obj: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` (store.imageviews.inspect's dict) with Config, RootFS and Metadata typed."""
    out = dict(obj)
    out["Config"] = _config(obj.get("Config"))
    rootfs = obj.get("RootFS")
    if isinstance(rootfs, Mapping):
        out["RootFS"] = GoStruct("types.RootFS", {"Type": "", "Layers": GoNilSlice()}, dict(rootfs))
    meta = obj.get("Metadata")
    if isinstance(meta, Mapping):
        values = dict(meta)
        if "LastTagTime" in values:
            values["LastTagTime"] = go_time(values["LastTagTime"])
        out["Metadata"] = GoStruct("image.Metadata", {"LastTagTime": _ZERO_TIME}, values)
    return out
