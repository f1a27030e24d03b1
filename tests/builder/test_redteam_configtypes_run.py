"""Red-team: `lamina run` of an image whose config has a runtime field of the wrong
JSON type, stored before the store refused such configs
(tests/store/test_redteam_configtypes.py): one clear error, and no container record
(a record with `argv: ["echo", 5]` made every later `lamina ps -a` an internal error)."""

from __future__ import annotations

import json

import pytest

from lamina.store import oci
from lamina.store.store import Store
from tests.builder.buildkit import lamina


@pytest.mark.root
@pytest.mark.parametrize("how", [("run", "-d"), ("run", "--rm")])
def test_run_of_such_an_image_stored_before_is_one_clear_error(build_store, monkeypatch, how):
    root, _ = build_store
    store = Store(root)
    try:
        image = store.resolve("bb")
        config = json.loads(json.dumps(image.config))
        config["config"] = {**(config.get("config") or {}), "Cmd": ["echo", 5]}
        with monkeypatch.context() as m:  # as an older lamina stored it: past the check
            m.setattr(oci, "check_config", lambda *a, **k: None)
            bad = store.commit_image(config, list(image.layers), tags=["redteam-cmdint"])
    finally:
        store.close()
    assert bad is not None
    try:
        before = lamina(root, "ps", "-a", "-q")
        run = lamina(root, *how, "redteam-cmdint")
        assert run.code != 0 and "config.Cmd is not an array of strings" in run.stderr
        assert "internal error" not in run.stderr and "TypeError" not in run.stderr
        after = lamina(root, "ps", "-a", "-q")
        assert after.code == 0 and after.stdout == before.stdout
    finally:
        lamina(root, "rmi", "redteam-cmdint")


def test_a_container_record_of_an_unchecked_config_still_reads():
    """A record an older lamina wrote from an image whose Cmd held a number
    (["echo", 5]): `ps`, `logs`, `rm` read it as strings instead of failing on it."""
    from lamina.builder.containers.state import Container

    fields = {f: None for f in Container.__dataclass_fields__}
    fields.update({"argv": ["echo", 5], "entrypoint": [1.5], "env": ["A=1", 2]})
    rec = Container.from_json(json.loads(json.dumps(fields)))
    assert rec.argv == ("echo", "5") and rec.entrypoint == ("1.5",) and rec.env == ("A=1", "2")
    assert " ".join(rec.argv) == "echo 5"
