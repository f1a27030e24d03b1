"""`--ulimit TYPE=SOFT[:HARD]` of `lamina build` (every RUN), `lamina run` and a bake /
compose target's `ulimits`, with docker's meaning (go-units ParseUlimit: the names, int64
values, SOFT alone is also HARD, -1 or infinity unlimited, soft above hard refused).

Expected values come from that definition and from the kernel (`ulimit -n` prints what
setrlimit set; a write past RLIMIT_FSIZE gets SIGXFSZ, 128+25 in a shell), and the cache
rule from BuildKit, whose exec op carries its ulimits in the op's metadata (pb.Meta), so
that another --ulimit is another key. No differential run against BuildKit: the dockerd
20.10 here ignores `docker build --ulimit`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from lamina.builder.plan.cachekey import CacheInputs
from lamina.builder.sandbox.ulimits import Ulimit, UlimitError, parse_ulimit, parse_ulimits
from tests.builder.buildkit import REPO, build, lamina, make_context

SIGXFSZ_STATUS = 128 + 25


# --- the flag's syntax (no root) ------------------------------------------------------

def test_parse_follows_dockers_rules():
    assert parse_ulimit("nofile=1024:2048") == Ulimit("nofile", 1024, 2048)
    assert parse_ulimit("nproc=50") == Ulimit("nproc", 50, 50)          # soft alone: hard too
    assert parse_ulimit("core=-1") == Ulimit("core", -1, -1)            # unlimited
    assert parse_ulimit("core=infinity") == Ulimit("core", -1, -1)
    assert parse_ulimit("stack=8192:-1") == Ulimit("stack", 8192, -1)   # any soft under -1
    assert parse_ulimit("cpu=9223372036854775807").soft == (1 << 63) - 1  # int64
    assert str(parse_ulimit("fsize=1024")) == "fsize=1024:1024"
    # repeatable: one per name, the last wins (docker keeps a map), sorted by name
    assert parse_ulimits(["nofile=1", "fsize=5", "nofile=2:3"]) == (
        Ulimit("fsize", 5, 5), Ulimit("nofile", 2, 3))
    names = {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
             "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"}
    assert {parse_ulimit(f"{n}=1").name for n in names} == names


@pytest.mark.parametrize("spec, message", [
    ("nofile", "invalid ulimit argument: nofile"),
    ("as=1", "invalid ulimit type: as"),              # docker leaves `as` out
    ("NOFILE=1", "invalid ulimit type: NOFILE"),
    ("nofile=1:2:3", "too many limit value arguments - 1:2:3"),
    ("nofile=x", "'x' is not a number"),
    ("nofile=", "'' is not a number"),
    ("nofile=1.5", "'1.5' is not a number"),
    ("nofile=\u0663", "is not a number"),           # a non-ASCII digit
    ("nofile= 1", "is not a number"),
    ("cpu=9223372036854775808", "out of range"),
    ("nofile=5:4", "soft limit must be less than or equal to hard limit: 5 > 4"),
    ("nofile=-1:10", "soft: -1 (unlimited), hard: 10"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(UlimitError) as err:
        parse_ulimit(spec)
    assert message in err.value.message


def test_cache_key_without_ulimits_is_unchanged_and_with_them_differs():
    base = CacheInputs(parent="scratch", instruction="RUN x")
    assert b"ulimits" not in base.canonical()                # keys made before stay valid
    a = CacheInputs(parent="scratch", instruction="RUN x", ulimits=("nofile=1:2",))
    b = CacheInputs(parent="scratch", instruction="RUN x", ulimits=("nofile=1:3",))
    assert len({base.key(), a.key(), b.key()}) == 3
    assert CacheInputs.from_json(a.to_json()).key() == a.key()
    assert a.sealed().ulimits == a.ulimits


def test_bake_and_compose_ulimits_reach_the_target(tmp_path):
    """A bake file's `ulimits` (appended over `inherits`, as buildx's Target.Merge) and a
    compose service's `build.ulimits` map (a number, or soft and hard)."""
    (tmp_path / "docker-bake.hcl").write_text(
        'target "base" {\n  ulimits = ["nofile=100:200"]\n}\n'
        'target "app" {\n  inherits = ["base"]\n  ulimits = ["fsize=1024"]\n}\n'
        'target "bad" {\n  ulimits = ["nofile=5:4"]\n}\n')
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    printed = lamina(tmp_path / "store", "bake", "-f", str(tmp_path / "docker-bake.hcl"),
                     "--print", "app")
    assert printed.code == 0, printed.stderr
    assert json.loads(printed.stdout)["target"]["app"]["ulimits"] == [
        "nofile=100:200", "fsize=1024"]
    bad = lamina(tmp_path / "store", "bake", "-f", str(tmp_path / "docker-bake.hcl"), "bad")
    assert bad.code != 0 and "Traceback" not in bad.stderr
    assert "soft limit must be less than or equal to hard limit: 5 > 4" in bad.stderr
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    build:\n      context: .\n      ulimits:\n"
        "        nproc: 65535\n        nofile:\n          soft: 20000\n          hard: 40000\n")
    printed = lamina(tmp_path / "store", "bake", "-f", str(tmp_path / "compose.yaml"), "--print")
    assert printed.code == 0, printed.stderr
    got = json.loads(printed.stdout)["target"]["web"]["ulimits"]
    assert parse_ulimits(got) == (Ulimit("nofile", 20000, 40000), Ulimit("nproc", 65535, 65535))


def test_provenance_records_ulimits_and_reads_back_only_valid_ones():
    from lamina.builder.attest.provenance import BuildInputs, provenance_predicate, read_predicate
    from lamina.builder.errors import BuildError

    d = "sha256:" + "a" * 64
    inputs = BuildInputs(dockerfile_path="Dockerfile", dockerfile_digest=d, dockerfile_text="",
                         context_digest=d, git=None, build_args={}, target=None,
                         source_date_epoch=0, bases=(), remote_sources={},
                         ulimits=("fsize=1024:1024", "nofile=100:200"))
    pred = provenance_predicate(inputs)
    args = pred["buildDefinition"]["externalParameters"]["request"]["args"]
    assert args == {"ulimit": "fsize=1024:1024,nofile=100:200"}   # BuildKit's frontend option
    assert read_predicate(pred).ulimits == (Ulimit("fsize", 1024, 1024), Ulimit("nofile", 100, 200))
    for hostile in (["nofile=1"], "nofile=5:4", "as=1", "nofile=1,"):
        args["ulimit"] = hostile
        with pytest.raises(BuildError, match="ulimit"):
            read_predicate(pred)
    del args["ulimit"]
    assert read_predicate(pred).ulimits == ()


# --- real builds and containers (root) ------------------------------------------------

LIMITS_DOCKERFILE = """\
FROM bb
RUN ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu
RUN head -c 4096 /dev/zero > /f; echo "status $?"; wc -c < /f
"""


def _hard(res: int) -> int:
    hard = resource.getrlimit(res)[1]
    return (1 << 62) if hard == resource.RLIM_INFINITY else hard


def _shown(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(eff & (1 << 24))


@pytest.mark.root
def test_build_ulimit_binds_every_run_and_keys_its_cache(build_store, tmp_path):
    root, _ = build_store
    assert _hard(resource.RLIMIT_NOFILE) >= 200 and _hard(resource.RLIMIT_NPROC) >= 60
    ctx = make_context(tmp_path / "ctx", LIMITS_DOCKERFILE)
    flags = ("--ulimit", "nofile=100:200", "--ulimit", "nproc=50:60", "--ulimit", "fsize=1024")
    first = build(root, ctx, *flags).check()
    assert first.step("ulimit -n").output == ["100", "200", "50", "60"]
    assert first.step("head -c").output == ["File size limit exceeded",
                                            f"status {SIGXFSZ_STATUS}", "1024"]
    # the same limits: a hit; another value: a miss that names it
    again = build(root, ctx, *flags).check()
    assert again.step("ulimit -n").cached and again.step("head -c").cached
    other = build(root, ctx, "--ulimit", "nofile=100:201", "--ulimit", "nproc=50:60",
                  "--ulimit", "fsize=1024").check()
    assert "--ulimit changed" in other.step("ulimit -n").miss
    assert other.step("ulimit -n").output == ["100", "201", "50", "60"]
    # no --ulimit: the RUN keeps what lamina has (nothing lowered, nothing raised), and
    # it is another key than any --ulimit
    plain = build(root, ctx).check()
    assert "--ulimit changed" in plain.step("ulimit -n").miss
    soft_n, hard_n = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft_u, hard_u = resource.getrlimit(resource.RLIMIT_NPROC)
    assert plain.step("ulimit -n").output == [_shown(soft_n), _shown(hard_n), _shown(soft_u),
                                              _shown(hard_u)]
    assert plain.step("head -c").output[-2:] == ["status 0", "4096"]


@pytest.mark.root
def test_build_ulimit_is_recorded_and_verify_rebuilds_with_it(build_store, tmp_path):
    """The provenance names the limits as BuildKit's frontend option `ulimit`; verify's
    rebuild applies them (here they decide the layer: a file cut at 1024 bytes)."""
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN head -c 4096 /dev/zero > /cut || true\n")
    build(root, ctx, "-t", "ulimited:1", "--ulimit", "fsize=1024").check()
    prov = json.loads(lamina(root, "inspect", "--provenance", "ulimited:1").stdout)
    assert prov["predicate"]["buildDefinition"]["externalParameters"]["request"]["args"][
        "ulimit"] == "fsize=1024:1024"
    result = lamina(root, "verify", "ulimited:1", str(ctx))
    assert result.code == 0, result.stdout + result.stderr
    assert "rebuilds identically" in result.stdout


def _run(root, *args):
    return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.root
def test_run_ulimit_and_bad_specs(build_store, tmp_path):
    root, _ = build_store
    r = _run(root, "run", "--rm", "--ulimit", "nofile=100:200", "--ulimit", "fsize=1024", "bb",
             "sh", "-c", "ulimit -n; ulimit -Hn; head -c 4096 /dev/zero > /tmp/f; echo $?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["100", "200", str(SIGXFSZ_STATUS)]
    for spec, message in (("nofilex=1", "invalid ulimit type: nofilex"),
                          ("nofile=5:4", "5 > 4")):
        bad = _run(root, "run", "--rm", "--ulimit", spec, "bb", "true")
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
        ctx = make_context(tmp_path / "bad", "FROM bb\nRUN true\n")
        refused = build(root, ctx, "--ulimit", spec)
        assert refused.code == 2 and message in refused.stderr
    # a hard limit above lamina's own: applied with CAP_SYS_RESOURCE, else one clear error
    above = _hard(resource.RLIMIT_MEMLOCK) * 2
    r = _run(root, "run", "--rm", "--ulimit", f"memlock={above}", "bb", "sh", "-c", "ulimit -Hl")
    if _has_cap_sys_resource():
        assert r.returncode == 0 and r.stdout == f"{above // 1024}\n", r.stderr
    else:
        assert r.returncode == 125 and "Traceback" not in r.stderr
        assert f"cannot set --ulimit memlock={above}:{above}" in r.stderr
        assert "CAP_SYS_RESOURCE" in r.stderr


@pytest.mark.root
def test_bake_target_ulimits_bind_its_runs(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN ulimit -n > /n; ulimit -Hn >> /n\n")
    (ctx / "docker-bake.hcl").write_text(
        f'target "lim" {{\n  context = "{ctx}"\n  tags = ["bakelimited:1"]\n'
        '  ulimits = ["nofile=100:200"]\n}\n')
    baked = lamina(root, "bake", "-f", str(ctx / "docker-bake.hcl"), "lim")
    assert baked.code == 0, baked.stdout + baked.stderr
    r = _run(root, "run", "--rm", "bakelimited:1", "cat", "/n")
    assert r.returncode == 0 and r.stdout == "100\n200\n", r.stderr
