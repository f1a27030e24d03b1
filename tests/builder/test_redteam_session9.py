"""Red team, session 9 (builder parts): --ulimit values from hostile bake / compose files
and provenances (`lamina verify` of an image someone else built).

Expected values: Go's strconv.ParseInt (what docker's go-units ParseUlimit uses) says
"value out of range" for a number past int64, however many digits it has (and takes
leading zeros); Linux setrlimit(2) semantics for what a raised limit grants.
"""

from __future__ import annotations

import pytest

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.ulimits import Ulimit, UlimitError, parse_ulimit


def test_ulimit_with_thousands_of_digits_is_a_usage_error_not_a_crash():
    # int() refuses strings past 4300 digits with a bare ValueError (an internal error);
    # ParseInt calls any number past int64 out of range
    for spec in ("nofile=" + "1" * 5000, "nofile=-" + "1" * 5000, "nofile=1:" + "9" * 4400):
        with pytest.raises(UlimitError, match="out of range"):
            parse_ulimit(spec)
    # leading zeros do not make a number bigger (ParseInt reads them)
    assert parse_ulimit("nofile=+" + "0" * 5000 + "5") == Ulimit("nofile", 5, 5)


def test_provenance_ulimit_with_thousands_of_digits_is_one_build_error():
    from lamina.builder.attest.provenance import BuildInputs, provenance_predicate, read_predicate

    d = "sha256:" + "a" * 64
    inputs = BuildInputs(dockerfile_path="Dockerfile", dockerfile_digest=d, dockerfile_text="",
                         context_digest=d, git=None, build_args={}, target=None,
                         source_date_epoch=0, bases=(), remote_sources={},
                         ulimits=("nofile=100:200",))
    pred = provenance_predicate(inputs)
    pred["buildDefinition"]["externalParameters"]["request"]["args"]["ulimit"] = "nofile=" + "7" * 6000
    with pytest.raises(BuildError, match="ulimit"):
        read_predicate(pred)


@pytest.mark.parametrize("name, text", [
    ("compose.yaml", "services:\n  a:\n    build:\n      context: .\n      ulimits:\n        nofile: {n}\n"),
    ("docker-bake.json", '{{"target": {{"default": {{"context": ".", "ulimits": ["nofile={n}"], '
                         '"args": {{"A": {n}}}}}}}}}'),
])
def test_bake_file_with_a_huge_integer_is_one_error_naming_it(tmp_path, name, text):
    import subprocess
    import sys

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / name).write_text(text.format(n="1" * 5000))
    r = subprocess.run([sys.executable, "-m", "lamina", "--root", str(tmp_path / "store"), "bake",
                        "--print", "-f", name], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "internal error" not in r.stderr and name in r.stderr and "4300 digits" in r.stderr
