"""Red-team: a hostile provenance predicate's fields reach `lamina verify` only with
the types a lamina build records (strings), else one BuildError."""

from __future__ import annotations

import copy

import pytest

from lamina.builder.attest.provenance import BuildInputs, GitContext, provenance_predicate, read_predicate
from lamina.builder.errors import BuildError

D = "sha256:" + "a" * 64


def _pred():
    inputs = BuildInputs(dockerfile_path="Dockerfile", dockerfile_digest=D, dockerfile_text="FROM scratch\n",
                         context_digest=D, git=GitContext(remote="https://example.invalid/r.git",
                                                          commit="b" * 40, dirty=False),
                         build_args={"A": "1"}, target=None, source_date_epoch=0, bases=(),
                         remote_sources={}, labels={"k": "v=w\nx"})
    return provenance_predicate(inputs)


def test_redteam_provenance_round_trip():
    rec = read_predicate(_pred())
    assert rec.labels == {"k": "v=w\nx"} and rec.build_args == {"A": "1"}
    assert rec.git_remote == "https://example.invalid/r.git" and rec.git_commit == "b" * 40


@pytest.mark.parametrize("mutate", [
    lambda p: p["buildDefinition"]["externalParameters"]["request"]["args"].update({"label:x": ["a"]}),
    lambda p: p["buildDefinition"]["externalParameters"]["request"]["args"].update({"label:": "v"}),
    lambda p: p["buildDefinition"]["externalParameters"]["request"]["args"].update({"build-arg:B": {"x": 1}}),
    lambda p: p["buildDefinition"]["externalParameters"]["context"]["git"]["digest"].update({"sha1": 123}),
    lambda p: p["buildDefinition"]["externalParameters"]["context"]["git"].update({"uri": ["--upload-pack=x"]}),
], ids=["label-list", "label-empty-name", "build-arg-dict", "commit-int", "uri-list"])
def test_redteam_provenance_hostile_types(mutate):
    p = copy.deepcopy(_pred())
    mutate(p)
    with pytest.raises(BuildError):
        read_predicate(p)
