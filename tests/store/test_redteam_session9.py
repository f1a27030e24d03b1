"""Red team, session 9 (store parts): credential helpers named by a hostile config.json;
the gzip inflater and TarScan against hostile layers.

Expected values: docker's credential-helper protocol (the helper is the program
docker-credential-<name> found on PATH; a name is no path).
"""

from __future__ import annotations

import json

import pytest

from lamina.store.registry.auth import CredentialError, find_credentials


@pytest.mark.parametrize("name", ["x\x00y", "x\ny", "../../tmp/x", "\x1b]52;c;AAAA\x07"])
def test_helper_name_that_is_no_program_name_is_one_credential_error(tmp_path, monkeypatch, name):
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": name}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)
    with pytest.raises(CredentialError, match="is not a program name"):
        find_credentials("localhost:5000")
