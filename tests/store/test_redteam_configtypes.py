"""Red-team: an image config whose runtime fields have the wrong JSON types.

The OCI image-spec types them (User, WorkingDir, StopSignal: string; Env, Entrypoint,
Cmd, Shell, OnBuild: array of strings; ArgsEscaped: boolean; null allowed as Go's
decoder allows it). docker/containerd/podman decode the config into typed structs, so
such an image fails to load or pull. lamina stored it as it came, and then:
`"Cmd": ["echo", 5]` - `lamina run -d` wrote a container record that made every later
`lamina ps -a` die with an internal error (TypeError) until the container was removed;
`"Env": [1]` and `"WorkingDir": 5` gave internal errors in `lamina run` and in a build
`FROM` the image. Now the store refuses such a config (load, pull, import, fsck) with
one CorruptContent naming the field, and `lamina run` checks an image stored before.
"""

from __future__ import annotations

import pytest

from lamina.store import oci
from lamina.store.errors import CorruptContent

BASE = {"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}


@pytest.mark.parametrize("field,value", [
    ("Env", [1, "PATH=/bin"]), ("Env", "PATH=/bin"), ("Cmd", ["echo", 5]), ("Cmd", "true"),
    ("Entrypoint", [None]), ("Shell", {"a": 1}), ("OnBuild", [["RUN x"]]),
    ("WorkingDir", 5), ("WorkingDir", ["/"]), ("User", 0), ("StopSignal", 9),
    ("ArgsEscaped", "yes"),
])
def test_a_runtime_field_of_the_wrong_type_is_refused(field, value):
    with pytest.raises(CorruptContent, match=f"config.{field}"):
        oci.check_config({**BASE, "config": {field: value}})


def test_the_types_of_the_spec_and_nulls_still_pass():
    oci.check_config({**BASE, "config": {
        "User": "1000:1000", "WorkingDir": "/w", "StopSignal": "SIGINT", "Env": ["A=1"],
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": None, "Shell": ["/bin/sh", "-c"],
        "OnBuild": [], "ArgsEscaped": True, "Labels": {"k": "v"}}})
    oci.check_config({**BASE, "config": {k: None for k in oci.CONFIG_STRINGS + oci.CONFIG_LISTS}})
    oci.check_config(BASE)
