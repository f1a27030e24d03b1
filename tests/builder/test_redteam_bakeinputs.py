"""Red-team: hostile Compose / bake *documents* (not the paths they name, which
test_redteam_bake covers). A bake file comes with the repository: a few hundred
bytes must not make `lamina bake` (even `--print`) run for hours, eat all memory or
die with an internal error. Each used to: a YAML "billion laughs" (aliases of
aliases) expanded to 10^9 nodes, `[[[[...]]]]` or `${A:-${A:-...}}` thousands deep
was a RecursionError, `"${v}${v}"` over forty variables a MemoryError, and
`regex_replace` with `(a|aa)+$` backtracked forever (buildx's RE2 is linear)."""

from __future__ import annotations

import time

import pytest

from lamina.builder.bake import hclfuncs
from lamina.builder.bake.files import load_definition
from lamina.builder.bake.targets import resolve
from lamina.builder.errors import BuildError


def _load(path, text):
    path.write_text(text)
    start = time.monotonic()
    try:
        definition = load_definition([path], environ={})
        return resolve(definition, ["a"] if path.suffix in (".hcl", ".json") else [])
    finally:
        assert time.monotonic() - start < 10


def test_yaml_billion_laughs_is_refused(tmp_path):
    lines = ["x0: &x0 [l, l, l, l, l, l, l, l, l, l]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines += ["services:", "  app:", "    build: .", "    labels: *x8"]
    with pytest.raises(BuildError, match="expands to more than"):
        _load(tmp_path / "compose.yaml", "\n".join(lines) + "\n")


def test_modest_aliasing_still_works(tmp_path):
    text = ("x-args: &args {A: '1', B: '2'}\nservices:\n  app:\n    build:\n"
            "      context: .\n      args: *args\n")
    resolved = _load(tmp_path / "compose.yaml", text)
    assert resolved.targets["app"]["args"] == {"A": "1", "B": "2"}


@pytest.mark.parametrize("name,text", [
    ("compose.yaml", "services: " + "[" * 50000 + "]" * 50000 + "\n"),
    ("compose.yaml", "services:\n  app:\n    build: \"" + "${A:-" * 5000 + "}" * 5000 + "\"\n"),
    ("docker-bake.json", '{"target":{"a":{"args":' + "[" * 50000 + "]" * 50000 + "}}}"),
])
def test_deep_nesting_is_a_clear_error(tmp_path, name, text):
    with pytest.raises(BuildError, match="nested too deeply"):
        _load(tmp_path / name, text)


def test_hcl_values_doubling_through_variables_are_capped(tmp_path):
    text = 'variable "v0" {\n  default = "xxxxxxxxxxxxxxxx"\n}\n'
    text += "".join(f'variable "v{i}" {{\n  default = "${{v{i - 1}}}${{v{i - 1}}}"\n}}\n'
                    for i in range(1, 40))
    text += 'target "a" {\n  args = { x = v39 }\n}\n'
    with pytest.raises(BuildError, match="longer than"):
        _load(tmp_path / "docker-bake.hcl", text)


def test_hcl_replace_cannot_multiply_a_value_past_the_cap(tmp_path):
    text = ('variable "big" {\n  default = "${replace(\\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\", '
            '\\"\\", \\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\\")}"\n}\n'
            'variable "huge" {\n  default = replace(big, "y", big)\n}\n'
            'target "a" {\n  args = { x = huge }\n}\n')
    with pytest.raises(BuildError, match="replace"):
        _load(tmp_path / "docker-bake.hcl", text)


def test_regex_replace_backtracking_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(hclfuncs, "REGEX_SECONDS", 0.2)
    text = ('target "a" {\n  args = { x = regex_replace("' + "a" * 40 + '!", "(a|aa)+$", "") }\n}\n')
    with pytest.raises(BuildError, match="took longer"):
        _load(tmp_path / "docker-bake.hcl", text)


def test_regex_replace_still_replaces(tmp_path):
    text = 'target "a" {\n  args = { x = regex_replace("v1.2.3", "v([0-9]+)\\\\..*", "major-$1") }\n}\n'
    resolved = _load(tmp_path / "docker-bake.hcl", text)
    assert resolved.targets["a"]["args"] == {"x": "major-1"}
