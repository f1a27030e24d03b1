"""Red team, session 9 (builder parts): --ulimit values from hostile bake / compose files
and provenances (`lamina verify` of an image someone else built); build --push while a
concurrent build moves the tag.

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


@pytest.mark.root
def test_verify_never_rebuilds_with_limits_above_laminas_own(build_store, tmp_path):
    """A provenance's `ulimit` is the image author's word: verify's rebuild takes it only
    up to lamina's own hard limits. With CAP_SYS_RESOURCE (root on a host) the old code
    raised them for the rebuild's RUNs (rtprio=99: real-time scheduling without
    CAP_SYS_NICE, memlock=-1: all memory locked); without it, it failed. Here lamina
    runs under a lower hard RLIMIT_NOFILE than the recorded one (the kernel refuses
    raising it, as it would refuse rtprio above lamina's own without the capability):
    the rebuild's RUN gets lamina's own limit and the notes say so."""
    import resource
    import subprocess
    import sys

    from tests.builder.buildkit import REPO, build, make_context

    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN ulimit -Hn > /hn; cat /hn\n")
    first = build(root, ctx, "-t", "s9-ulimited:1", "--ulimit", "nofile=1024:1024").check()
    assert first.step("ulimit -Hn").output == ["1024"]

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    r = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), "verify",
                        "s9-ulimited:1", str(ctx)], capture_output=True, text=True, cwd=REPO,
                       timeout=240, preexec_fn=lower)
    out = r.stdout + r.stderr
    assert "cannot set --ulimit" not in out, out
    assert "nofile=1024:1024 recorded; rebuilt with nofile=512:512" in out, out
    assert "rebuilds identically" not in out  # /hn holds 512 in the rebuild


@pytest.mark.root
def test_build_push_sends_the_built_image_even_when_its_tag_moves_meanwhile(tmp_path):
    """`build -t REG/app:1 --push` (deliver_image) while a concurrent build tags
    REG/app:1 with another image: the registry must get the image this build made.
    The old code pushed by name, resolved when the push started: the other image went
    up. skopeo reads back the image config the registry holds."""
    import json
    import subprocess

    from lamina.builder.outputs import deliver_image
    from lamina.store.store import Store
    from tests.conftest import require_tool
    from tests.store.registryfix import registry, store_with_app

    store = Store(store_with_app(tmp_path, "FROM bb\nRUN echo app > /app\n"))
    built = store.resolve("app:1")
    other = store.resolve("bb")
    with registry(tmp_path / "reg") as host:
        name = f"{host}/team/app:1"
        store.tag(name, built.manifest_digest)  # the build's -t

        def progress_for(ref):
            store.tag(name, other.manifest_digest)  # the concurrent build, before the push
            return None

        deliver_image(store, built, [], (name,), push=True, progress_for=progress_for)
        skopeo = require_tool("skopeo")
        r = subprocess.run([skopeo, "inspect", "--config", "--raw", "--tls-verify=false",
                            f"docker://{name}"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    sent = "sha256:" + __import__("hashlib").sha256(r.stdout).hexdigest()
    assert sent == built.config_digest != other.config_digest
