"""Red-team: `lamina verify`'s clone of a git URL from a hostile provenance (or
command line) never runs a command through git: no option injection, no ext::
transport even where the user's git config allows every protocol."""

from __future__ import annotations

import pytest

from lamina.builder.attest.verify import clone_context
from lamina.builder.errors import BuildError


@pytest.mark.parametrize("url", [
    "ext::sh -c touch% {marker}",
    "--upload-pack=touch {marker}",
    "-c",
])
def test_redteam_clone_runs_no_command(tmp_path, monkeypatch, url):
    cfg = tmp_path / "gitconfig"
    cfg.write_text("[protocol]\n\tallow = always\n")      # a permissive user config
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))
    marker = tmp_path / "pwned"
    with pytest.raises(BuildError):
        clone_context(url.format(marker=marker), "a" * 40, tmp_path / "dest")
    assert not marker.exists()


def test_redteam_clone_refuses_option_commit(tmp_path):
    with pytest.raises(BuildError, match="not a commit"):
        clone_context("file:///nonexistent.git", "--upload-pack=x", tmp_path / "dest")
