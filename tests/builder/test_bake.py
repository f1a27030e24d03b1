"""`lamina bake` definitions: Compose and bake files (HCL, JSON) resolved as
`docker buildx bake --print` shows them, without building.

Expected JSON is written from buildx's documentation (docs.docker.com/build/bake:
reference, compose-file, overrides, variables, inheritance): the shape
{"group": {NAME: {"targets": [...]}}, "target": {NAME: {...}}}, `context` "." and
`dockerfile` "Dockerfile" filled in, cache entries as {"ref", "type"} objects,
secrets as {"id", "src"}, the default group's targets sorted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.builder.buildkit import lamina


def bake_print(tmp_path: Path, *args: str) -> dict:
    run = lamina(tmp_path / "store", "bake", "--print", *args)
    assert run.code == 0, run.stderr
    return json.loads(run.stdout)


def bake_error(tmp_path: Path, *args: str) -> str:
    run = lamina(tmp_path / "store", "bake", *args)
    assert run.code != 0, run.stdout
    assert "Traceback" not in run.stderr
    return run.stderr


COMPOSE = """\
services:
  db:
    image: docker.io/username/db
    build:
      dockerfile: Dockerfile.db
  webapp:
    image: example/webapp:${TAG:-dev}
    build:
      context: ./web
      target: final
      args:
        - NODE_VERSION=22
        - FROM_ENV
        - UNSET_ARG
      labels:
        com.example.team: web
      cache_from:
        - docker.io/username/webapp:cache
      cache_to:
        - type=local,dest=/tmp/cache
      secrets:
        - npmrc
  worker:
    build:
      context: worker
      args:
        MODE: fast
        LEVEL: 3
  redis:
    image: redis:7
secrets:
  npmrc:
    file: ./npmrc.txt
"""


def test_compose_print_as_buildx(tmp_path, monkeypatch):
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    monkeypatch.setenv("FROM_ENV", "from-environment")
    monkeypatch.delenv("UNSET_ARG", raising=False)
    monkeypatch.delenv("TAG", raising=False)
    got = bake_print(tmp_path, "-f", str(tmp_path / "compose.yaml"))
    assert got == {
        "group": {"default": {"targets": ["db", "webapp", "worker"]}},
        "target": {
            "db": {"context": ".", "dockerfile": "Dockerfile.db", "tags": ["docker.io/username/db"]},
            "webapp": {
                "context": "./web",
                "dockerfile": "Dockerfile",
                "args": {"FROM_ENV": "from-environment", "NODE_VERSION": "22"},
                "labels": {"com.example.team": "web"},
                "tags": ["example/webapp:dev"],
                "cache-from": [{"ref": "docker.io/username/webapp:cache", "type": "registry"}],
                "cache-to": [{"dest": "/tmp/cache", "type": "local"}],
                "target": "final",
                "secret": [{"id": "npmrc", "src": str(tmp_path / "npmrc.txt")}],
            },
            "worker": {"context": "worker", "dockerfile": "Dockerfile",
                       "args": {"LEVEL": "3", "MODE": "fast"}},
        },
    }


def test_compose_one_service_and_unknown_name(tmp_path):
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    got = bake_print(tmp_path, "-f", str(tmp_path / "compose.yaml"), "worker")
    assert got["group"] == {"default": {"targets": ["worker"]}}
    assert list(got["target"]) == ["worker"]
    err = bake_error(tmp_path, "-f", str(tmp_path / "compose.yaml"), "--print", "nope")
    assert "failed to find target 'nope'" in err


def test_compose_interpolation_and_dotenv(tmp_path, monkeypatch):
    (tmp_path / "compose.yaml").write_text("""\
services:
  app:
    image: "${REGISTRY}/app:${TAG:-latest}"
    build:
      args:
        EMPTY_COLON: "${EMPTY:-colon-default}"
        EMPTY_DASH: "${EMPTY-dash-default}"
        UNSET_DASH: "${NOPE-dash-default}"
        ALT: "${REGISTRY:+has-registry}"
        DOLLARS: "cost $$5 and $${NOT_A_VAR}"
        FROM_DOTENV: "${ONLY_IN_DOTENV}"
        ENV_WINS: "${BOTH}"
        NESTED: "${NOPE:-${REGISTRY}-x}"
""")
    (tmp_path / ".env").write_text("# comment\nREGISTRY=reg.example:5000\nONLY_IN_DOTENV='single # quoted'\n"
                                   "BOTH=from-dotenv\nexport EMPTY=\n")
    monkeypatch.setenv("BOTH", "from-environment")
    for name in ("REGISTRY", "TAG", "EMPTY", "NOPE", "ONLY_IN_DOTENV"):
        monkeypatch.delenv(name, raising=False)
    target = bake_print(tmp_path, "-f", str(tmp_path / "compose.yaml"))["target"]["app"]
    assert target["tags"] == ["reg.example:5000/app:latest"]
    assert target["args"] == {
        "EMPTY_COLON": "colon-default",      # :- also replaces an empty value
        "EMPTY_DASH": "",                    # -  only replaces an unset one
        "UNSET_DASH": "dash-default",
        "ALT": "has-registry",
        "DOLLARS": "cost $5 and ${NOT_A_VAR}",
        "FROM_DOTENV": "single # quoted",
        "ENV_WINS": "from-environment",      # the environment beats .env
        "NESTED": "reg.example:5000-x",
    }


def test_compose_required_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MUST", raising=False)
    (tmp_path / "compose.yaml").write_text(
        "services:\n  app:\n    build:\n      args:\n        X: \"${MUST:?set MUST to the version}\"\n")
    err = bake_error(tmp_path, "-f", str(tmp_path / "compose.yaml"), "--print")
    assert "MUST" in err and "set MUST to the version" in err
    monkeypatch.setenv("MUST", "1.2")
    got = bake_print(tmp_path, "-f", str(tmp_path / "compose.yaml"))
    assert got["target"]["app"]["args"] == {"X": "1.2"}


BAKE_HCL = """\
variable "TAG" {
  default = "latest"
}
variable "REPO" {
  default = "example/${TAG == "latest" ? "dev" : "rel"}"
}
function "tagged" {
  params = [name]
  result = ["${REPO}/${name}:${TAG}"]
}
group "default" {
  targets = ["app", "tools"]
}
group "tools" {
  targets = ["lint"]
}
target "_common" {
  args = {
    GO_VERSION = "1.22"
    COMMIT     = "abc"
  }
  labels = {
    "org.opencontainers.image.source" = "https://example.com/repo"
  }
}
target "app" {
  inherits   = ["_common"]
  dockerfile = "app.Dockerfile"
  target     = "runtime"
  tags       = tagged("app")
  args = {
    COMMIT = "def"
  }
}
target "lint" {
  inherits = ["_common"]
  context  = "tools"
  tags     = ["${REPO}/lint:${upper(TAG)}"]
  dockerfile-inline = <<EOT
FROM scratch
COPY . /src
EOT
}
"""

BAKE_JSON = {
    "variable": {"TAG": {"default": "latest"},
                 "REPO": {"default": "example/${TAG == \"latest\" ? \"dev\" : \"rel\"}"}},
    "group": {"default": {"targets": ["app", "tools"]}, "tools": {"targets": ["lint"]}},
    "target": {
        "_common": {"args": {"GO_VERSION": "1.22", "COMMIT": "abc"},
                    "labels": {"org.opencontainers.image.source": "https://example.com/repo"}},
        "app": {"inherits": ["_common"], "dockerfile": "app.Dockerfile", "target": "runtime",
                "tags": ["${REPO}/app:${TAG}"], "args": {"COMMIT": "def"}},
        "lint": {"inherits": ["_common"], "context": "tools", "tags": ["${REPO}/lint:${upper(TAG)}"],
                 "dockerfile-inline": "FROM scratch\nCOPY . /src\n"},
    },
}


def expected_bake(tag: str, repo: str) -> dict:
    return {
        "group": {"default": {"targets": ["app", "tools"]}, "tools": {"targets": ["lint"]}},
        "target": {
            "app": {
                "context": ".",
                "dockerfile": "app.Dockerfile",
                "args": {"COMMIT": "def", "GO_VERSION": "1.22"},
                "labels": {"org.opencontainers.image.source": "https://example.com/repo"},
                "tags": [f"{repo}/app:{tag}"],
                "target": "runtime",
            },
            "lint": {
                "context": "tools",
                "dockerfile": "Dockerfile",
                "dockerfile-inline": "FROM scratch\nCOPY . /src\n",
                "args": {"COMMIT": "abc", "GO_VERSION": "1.22"},
                "labels": {"org.opencontainers.image.source": "https://example.com/repo"},
                "tags": [f"{repo}/lint:{tag.upper()}"],
            },
        },
    }


@pytest.mark.parametrize("form", ["hcl", "json"])
def test_bakefile_group_inherits_variables(tmp_path, monkeypatch, form):
    path = tmp_path / f"docker-bake.{form}"
    path.write_text(BAKE_HCL if form == "hcl" else json.dumps(BAKE_JSON))
    monkeypatch.delenv("TAG", raising=False)
    assert bake_print(tmp_path, "-f", str(path)) == expected_bake("latest", "example/dev")
    monkeypatch.setenv("TAG", "v1.0")  # a variable's default yields to the environment
    assert bake_print(tmp_path, "-f", str(path)) == expected_bake("v1.0", "example/rel")


def test_bakefile_default_lookup_and_merge_order(tmp_path, monkeypatch):
    """No -f: compose.yaml then docker-bake.hcl from the current directory, merged;
    the bake file's tags win, args merge (buildx's reference example)."""
    (tmp_path / "compose.yaml").write_text(
        "services:\n  webapp:\n    image: docker.io/username/webapp:latest\n"
        "    build:\n      dockerfile: Dockerfile\n      args:\n        A: compose\n        B: compose\n")
    (tmp_path / "docker-bake.hcl").write_text(
        'target "webapp" {\n  tags = ["docker.io/username/webapp:bake"]\n  args = { B = "bake" }\n}\n')
    (tmp_path / "docker-bake.override.hcl").write_text(
        'target "webapp" {\n  target = "release"\n}\n')
    monkeypatch.chdir(tmp_path)
    got = bake_print(tmp_path)
    assert got == {"group": {"default": {"targets": ["webapp"]}},
                   "target": {"webapp": {"context": ".", "dockerfile": "Dockerfile",
                                         "args": {"A": "compose", "B": "bake"},
                                         "tags": ["docker.io/username/webapp:bake"],
                                         "target": "release"}}}


def test_set_overrides(tmp_path, monkeypatch):
    path = tmp_path / "docker-bake.hcl"
    path.write_text(BAKE_HCL)
    monkeypatch.delenv("TAG", raising=False)
    monkeypatch.setenv("FROM_SHELL", "shell-value")
    got = bake_print(tmp_path, "-f", str(path),
                     "--set", "app.args.COMMIT=override",
                     "--set", "*.labels.stage=ci",
                     "--set", "lint.tags=one:1", "--set", "lint.tags=two:2",
                     "--set", "app.tags+=extra:1",
                     "--set", "app.args.FROM_SHELL",
                     "--set", "app.no-cache=true",
                     "--set", "app.dockerfile=other.Dockerfile")
    app, lint = got["target"]["app"], got["target"]["lint"]
    assert app["args"] == {"COMMIT": "override", "FROM_SHELL": "shell-value", "GO_VERSION": "1.22"}
    assert app["labels"]["stage"] == "ci" and lint["labels"]["stage"] == "ci"
    assert lint["tags"] == ["one:1", "two:2"]
    assert app["tags"] == ["example/dev/app:latest", "extra:1"]
    assert app["no-cache"] is True
    assert app["dockerfile"] == "other.Dockerfile"
    err = bake_error(tmp_path, "-f", str(path), "--print", "--set", "nothing.tags=x")
    assert "could not find any target matching 'nothing'" in err
    err = bake_error(tmp_path, "-f", str(path), "--print", "--set", "app.bogus=x")
    assert "unknown key 'bogus'" in err


def test_named_group_and_pattern(tmp_path):
    path = tmp_path / "docker-bake.hcl"
    path.write_text(BAKE_HCL)
    got = bake_print(tmp_path, "-f", str(path), "tools")
    # buildx: the group asked for, plus "default" naming what was asked
    assert got["group"] == {"default": {"targets": ["tools"]}, "tools": {"targets": ["lint"]}}
    assert list(got["target"]) == ["lint"]
    got = bake_print(tmp_path, "-f", str(path), "a*")
    assert list(got["target"]) == ["app"]


def test_bakefile_errors_are_one_line(tmp_path):
    bad = tmp_path / "docker-bake.hcl"
    bad.write_text('target "app" {\n  tags = [\n')
    assert "not a valid HCL bake file" in bake_error(tmp_path, "-f", str(bad), "--print")
    bad.write_text('target "app" {\n  tags = ["${MISSING}"]\n}\n')
    err = bake_error(tmp_path, "-f", str(bad), "--print")
    assert "unknown variable 'MISSING'" in err and "'tags'" in err
    bad.write_text('target "a" {\n  inherits = ["b"]\n}\ntarget "b" {\n  inherits = ["a"]\n}\n')
    assert "inherits from itself" in bake_error(tmp_path, "-f", str(bad), "--print", "a")
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chdir(empty)
    try:
        assert "no bake file" in bake_error(tmp_path)
    finally:
        os.chdir(tmp_path)


def test_ssh_and_foreign_platform_refused_before_building(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  withssh:\n    build:\n      context: .\n      ssh:\n        - default\n")
    err = bake_error(tmp_path, "-f", str(tmp_path / "compose.yaml"))
    assert "target 'withssh': ssh (default) is not supported" in err
    (tmp_path / "compose.yaml").write_text(
        "services:\n  arm:\n    build:\n      context: .\n      platforms: [linux/s390x]\n")
    err = bake_error(tmp_path, "-f", str(tmp_path / "compose.yaml"))
    assert "platform linux/s390x is not this host's" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.tar*"))


def test_expressions():
    from lamina.builder.bake.hclexpr import ExpressionError, Scope, evaluate_raw

    values = {"A": "x", "N": 3, "L": ["p", "q"], "B": False}
    scope = Scope(lookup=lambda n: values[n])
    assert evaluate_raw('"${A}-${N + 1}"', scope) == "x-4"
    assert evaluate_raw("${N * 2 + 1}", scope) == 7
    assert evaluate_raw("L", scope) == ["p", "q"]
    assert evaluate_raw('"$${A} %%{x}"', scope) == "${A} %{x}"
    assert evaluate_raw('${join(",", L)}', scope) == "p,q"
    assert evaluate_raw('${!B && N >= 3 ? "yes" : "no"}', scope) == "yes"
    assert evaluate_raw('${replace(lower("A.B"), ".", "-")}', scope) == "a-b"
    assert evaluate_raw('"a\\tb\\u0041"', scope) == "a\tbA"
    assert evaluate_raw('"<<-EOT\n    one\n      two\n    EOT"', scope) == "one\n  two\n"
    with pytest.raises(ExpressionError):
        evaluate_raw('"%{ if B }x%{ endif }"', scope)


def test_shared_stages_only_when_the_args_they_read_agree(tmp_path):
    """Targets of one Dockerfile share their common named stage (built once first),
    unless a build arg they set differently is read by it."""
    from lamina.builder.bake.runner import shared_stages
    from lamina.builder.bake.targets import Target

    (tmp_path / "Dockerfile").write_text(
        "FROM bb AS base\nARG BASEV\nRUN echo $BASEV\n"
        "FROM base AS a\nARG WHO\nRUN echo a $WHO\n"
        "FROM base AS b\nRUN echo b\n"
        "FROM bb AS c\nRUN echo c\n")

    def target(name, stage, **args):
        return Target(name=name, context=tmp_path, dockerfile=tmp_path / "Dockerfile",
                      target=stage, args=tuple(sorted(args.items())), tags=(f"{name}:1",))

    (shared,) = shared_stages([target("a", "a", WHO="x", BASEV="1"), target("b", "b", BASEV="1"),
                               target("c", "c")])
    assert (shared.stage, shared.members, shared.target.args) == ("base", ("a", "b"), (("BASEV", "1"),))
    assert shared.target.tags == () and shared.target.target == "base"
    # BASEV differs and the base stage reads it: no sharing
    assert shared_stages([target("a", "a", BASEV="1"), target("b", "b", BASEV="2")]) == []
    # nothing in common but the base image: no sharing
    assert shared_stages([target("b", "b"), target("c", "c")]) == []
    # --no-cache targets cannot reuse a stage built before them
    from dataclasses import replace
    assert shared_stages([replace(target("a", "a"), no_cache=True), target("b", "b")]) == []


def test_real_world_bake_file_forms(tmp_path, monkeypatch):
    """Forms seen in public docker-bake.hcl files and buildx's variables/functions
    docs: an empty metadata-action target to inherit from, bare variable
    references, numbers in args, a function calling a variable, a conditional tag
    that is empty (buildx drops empty tags), `split(...)[0]`, output paths, the
    `local` platform."""
    monkeypatch.delenv("TAG", raising=False)
    (tmp_path / "docker-bake.hcl").write_text("""\
# -*- hcl -*-
/** Special target: https://github.com/docker/metadata-action#bake-definition */
target "docker-metadata-action" {}
variable "GO_VERSION" {
  default = "1.17.0"
}
variable "BIN_OUT" {
  default = "./bin"
}
variable "REPO" {
  default = "user/repo"
}
variable "TAG" {
  default = ""
}
function "increment" {
  params = [number]
  result = number + 1
}
function "tag" {
  params = [tag]
  result = ["${REPO}:${tag}"]
}
target "_common" {
  args = {
    GO_VERSION = GO_VERSION
    BUILDKIT_CONTEXT_KEEP_GIT_DIR = 1
    buildno = "${increment(123)}"
  }
}
target "binaries" {
  inherits  = ["docker-metadata-action", "_common"]
  target    = "binaries"
  output    = [BIN_OUT]
  platforms = ["local"]
  tags      = ["${REPO}:latest", notequal("", TAG) ? "${REPO}:${TAG}" : ""]
  labels    = { major = split(".", GO_VERSION)[0] }
}
target "webapp" {
  tags = tag("v1")
}
""")
    got = bake_print(tmp_path, "-f", str(tmp_path / "docker-bake.hcl"), "binaries", "webapp")
    assert got == {
        "group": {"default": {"targets": ["binaries", "webapp"]}},
        "target": {
            "binaries": {
                "context": ".", "dockerfile": "Dockerfile",
                "args": {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "1", "GO_VERSION": "1.17.0", "buildno": "124"},
                "labels": {"major": "1"},
                "tags": ["user/repo:latest"],
                "target": "binaries",
                "platforms": ["local"],
                "output": [{"dest": "./bin", "type": "local"}],
            },
            "webapp": {"context": ".", "dockerfile": "Dockerfile", "tags": ["user/repo:v1"]},
        },
    }
    monkeypatch.setenv("TAG", "v2")
    got = bake_print(tmp_path, "-f", str(tmp_path / "docker-bake.hcl"), "binaries")
    assert got["target"]["binaries"]["tags"] == ["user/repo:latest", "user/repo:v2"]


@pytest.mark.parametrize("name,text", [
    ("compose.yaml", "services: [a, b]\n"),
    ("compose.yaml", "services:\n  a:\n    build:\n      secrets: token\n"),
    ("compose.yaml", "services:\n  a:\n    build: 3\n"),
    ("compose.yaml", "services:\n  a:\n    build:\n      args: 7\n"),
    ("compose.yaml", "services:\n  a:\n    build: .\n    image: ${X\n"),
    ("compose.yaml", "services:\n  a: {build: .\n"),
    ("compose.yaml", "- just\n- a list\n"),
    ("compose.yaml", "services:\n  a b:\n    build: .\n"),
    ("docker-bake.hcl", 'target "a" {\n  tags = [element([], 0)]\n}\n'),
    ("docker-bake.hcl", 'target "a" {\n  args = { X = 1 / 0 }\n}\n'),
    ("docker-bake.hcl", 'target "a" {\n  tags = ["${regex_replace("x", "(", "y")}"]\n}\n'),
    ("docker-bake.hcl", 'target "a" {\n  matrix = { v = ["1", "2"] }\n}\n'),
    ("docker-bake.hcl", 'target "a" {\n  tags = nope("x")\n}\n'),
    ("docker-bake.hcl", 'target "a" {\n  args = "not a map"\n}\n'),
    ("docker-bake.json", '{"target": {"a": ["not", "an", "object"]}}'),
    ("docker-bake.json", '{"target": {"a": {"tags": ["${"]}}}'),
])
def test_malformed_definitions_are_one_clear_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    run = lamina(tmp_path / "store", "bake", "-f", str(tmp_path / name), "--print")
    assert run.code == 1, (run.code, run.stdout, run.stderr)
    assert run.stderr.startswith("lamina: ") and "internal error" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize("build", ["tags: 5", "ssh: 5", "x-bake: {tags: 5}",
                                   "secrets: [{source: [a]}]"])
def test_compose_values_of_the_wrong_type_are_one_clear_error(tmp_path, build):
    (tmp_path / "compose.yaml").write_text(
        f"services:\n  a:\n    build:\n      context: .\n      {build}\n"
        "secrets:\n  a:\n    file: ./a\n")
    run = lamina(tmp_path / "store", "bake", "--print", "-f", str(tmp_path / "compose.yaml"))
    assert run.code == 1
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.startswith("lamina: ")


def test_jobs_defaults_to_the_core_count(tmp_path, monkeypatch):
    """Without --jobs, as many targets build at once as os.cpu_count() says (the issue's
    "bounded by --jobs, default the core count"); --jobs N bounds them to N. Each
    target's build is replaced by a stand-in that records how many run at once."""
    import threading
    import time

    from lamina.builder.bake import runner

    names = [f"s{i}" for i in range(5)]
    services = []
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"FROM scratch\nENV N={name}\n")
        services.append(f"  {name}:\n    build: ./{name}\n")
    (tmp_path / "compose.yaml").write_text("services:\n" + "".join(services))
    lock = threading.Lock()
    running, peak = [0], [0]

    def stand_in(self, t):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return runner.TargetResult(t.name, "built", image_id="sha256:" + "0" * 64)

    monkeypatch.setattr(runner.Bake, "_one", stand_in)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 3)
    run = lamina(tmp_path / "store", "bake", "-f", str(tmp_path / "compose.yaml"))
    assert run.code == 0, run.stderr
    assert peak[0] == 3
    peak[0] = 0
    run = lamina(tmp_path / "store", "bake", "-f", str(tmp_path / "compose.yaml"), "--jobs", "2")
    assert run.code == 0, run.stderr
    assert peak[0] == 2
