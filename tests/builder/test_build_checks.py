"""builder.plan.checks and `lamina build --check`: BuildKit's build checks that need
ARG values, base image configs and the .dockerignore, and how findings reach the user.

Expected findings (rule, message, line) come from BuildKit's rule documentation
(frontend/dockerfile/docs/rules/*.md), its message formats (linter/ruleset.go) and
its integration tests (frontend/dockerfile/dockerfile_check_test.go), never from
this code's output.
"""

from __future__ import annotations

import pytest

from lamina.builder.cli import main
from lamina.builder.context.dockerignore import IgnoreRules
from lamina.builder.errors import BuildError
from lamina.builder.plan.checks import check_dockerfile, levenshtein, suggest
from lamina.builder.plan.resolved import Platform
from lamina.grammar import parse

AMD64 = Platform("linux", "amd64")


def image(arch: str = "amd64", env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
          shell=None) -> dict:
    config = {"Env": list(env)}
    if shell:
        config["Shell"] = list(shell)
    return {"os": "linux", "architecture": arch, "config": config}


def found(text: str, *, images=None, **kw) -> list[tuple[str, str, int]]:
    images = images or {}
    kw.setdefault("platform", AMD64)
    findings = check_dockerfile(parse(text), base_config=lambda ref: images.get(ref), **kw)
    return sorted(((f.rule, f.message, f.line) for f in findings), key=lambda t: (t[2], t[1]))


def ordered(expected):
    return sorted(expected, key=lambda t: (t[2], t[1]))


ALPINE = {"alpine": image(), "python": image(env=("PATH=/bin", "PYTHON_VERSION=3.12"))}
UNDEF = "Usage of undefined variable '${}'"
NOT_DECLARED = "FROM argument '{}' is not declared"

CASES = [
    # -- UndefinedArgInFrom (testUndeclaredArg)
    ("\nARG base=scratch\nFROM $base\nCOPY Dockerfile .\n", {}, []),
    ("\nARG BUILDPLATFORM=linux/amd64\nFROM --platform=$BUILDPLATFORM scratch\nCOPY Dockerfile .\n", {}, []),
    ("\nFROM --platform=$BUILDPLATFORM scratch\nCOPY Dockerfile .\n", {}, []),
    ("\nARG DEBUG\nFROM scratch${DEBUG}\nCOPY Dockerfile .\n", {}, []),
    ("\nARG DEBUG\nFROM scra${DEBUG:-tch}\nCOPY Dockerfile .\n", {}, []),
    ('\nARG DEBUG=""\nFROM scratch${DEBUG-@bogus}\nCOPY Dockerfile .\n', {}, []),
    ("\nFROM --platform=$BULIDPLATFORM scratch\nCOPY Dockerfile .\n", {},
     [("UndefinedArgInFrom", NOT_DECLARED.format("BULIDPLATFORM") + " (did you mean BUILDPLATFORM?)", 2)]),
    ("\nARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MYARCH} busybox\nCOPY Dockerfile .\n",
     {}, [("UndefinedArgInFrom", NOT_DECLARED.format("MYARCH") + " (did you mean MY_ARCH?)", 4)]),
    ("\nARG tag=latest\nFROM busybox:${tag}${version} AS b\nCOPY Dockerfile .\n", {},
     [("UndefinedArgInFrom", NOT_DECLARED.format("version"), 3)]),
    ("FROM node:22${VARIANT} AS jsbuilder\n", {},
     [("UndefinedArgInFrom", NOT_DECLARED.format("VARIANT"), 1)]),
    ('ARG VARIANT="-alpine3.20"\nFROM node:22${VARIANT} AS jsbuilder\n', {}, []),
    # -- UndefinedVar (testUnmatchedVars, docs)
    ("\nFROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n", {}, []),
    ("\nFROM alpine AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n", {}, []),
    ("\nFROM alpine\nRUN echo $PATH\n", {}, []),
    ("\nFROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n", {},
     [("UndefinedVar", UNDEF.format("foo"), 3)]),
    ("\nFROM alpine\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\nARG DIR_CONFIG=config/\n"
     "COPY $DIR_ASSET .\n", {},
     [("UndefinedVar", UNDEF.format("DIR_ASSET") + " (did you mean $DIR_ASSETS?)", 6)]),
    ("\nFROM alpine\nENV PATH=$PAHT:/tmp/bin\n", {},
     [("UndefinedVar", UNDEF.format("PAHT") + " (did you mean $PATH?)", 3)]),
    ("FROM alpine AS base\nCOPY $foo .\n", {}, [("UndefinedVar", UNDEF.format("foo"), 2)]),
    ("FROM alpine AS base\nARG foo\nCOPY $foo .\n", {}, []),
    ("FROM alpine AS base\nARG VERSION=$foo\n", {}, [("UndefinedVar", UNDEF.format("foo"), 2)]),
    ("FROM python AS base\nARG VERSION=$PYTHON_VERSION\n", {}, []),
    # shell-form RUN is left to the shell
    ("FROM alpine\nRUN echo $undefined_here\n", {}, []),
    # a base image lamina does not hold: its variables are unknown, nothing is guessed
    ("FROM unknown/image\nCOPY $foo .\n", {}, []),
    # -- RedundantTargetPlatform
    ("\nFROM --platform=$TARGETPLATFORM scratch\n", {},
     [("RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM is "
       "redundant as this is the default behavior", 2)]),
    ("\nFROM --platform=${TARGETPLATFORM} scratch\n", {},
     [("RedundantTargetPlatform", "Setting platform to predefined ${TARGETPLATFORM} in FROM is "
       "redundant as this is the default behavior", 2)]),
    ("\n# check=skip=RedundantTargetPlatform\nFROM --platform=$TARGETPLATFORM scratch\n", {}, []),
    ("FROM alpine AS builder\nRUN apk add --no-cache git\n", {}, []),
    # -- FromPlatformFlagConstDisallowed
    ("\nFROM --platform=linux/amd64 scratch\n", {},
     [("FromPlatformFlagConstDisallowed",
       'FROM --platform flag should not use constant value "linux/amd64"', 2)]),
    ("\nFROM --platform=linux/amd64 scratch AS my_amd64_stage\n", {}, []),
    ("\nFROM --platform=linux/amd64 scratch AS linux\n", {}, []),
    ("FROM --platform=${BUILDPLATFORM} alpine AS base\nRUN apk add --no-cache git\n", {}, []),
    # -- InvalidDefaultArgInFrom (testInvalidDefaultArgInFrom: build args do not hide it)
    ("\nARG VERSION\nFROM busybox:$VERSION\n", {"VERSION": "latest"},
     [("InvalidDefaultArgInFrom",
       "Default value for ARG busybox:$VERSION results in empty or invalid base image name", 3)]),
    ("\nARG IMAGE\nFROM $IMAGE\n", {"IMAGE": "busybox:latest"},
     [("InvalidDefaultArgInFrom", "Default value for ARG $IMAGE results in empty or invalid base "
       "image name", 3)]),
    ('\nARG SFX="box:"\nFROM busy${SFX}\n', {"SFX": "box:latest"},
     [("InvalidDefaultArgInFrom", "Default value for ARG busy${SFX} results in empty or invalid "
       "base image name", 3)]),
    ('\nARG VERSION="latest"\nFROM busybox:${VERSION}\n', {"VERSION": "latest"}, []),
    ('\nARG BUSYBOX_VARIANT=""\nFROM busybox:stable${BUSYBOX_VARIANT}\n', {"BUSYBOX_VARIANT": "-musl"}, []),
    ("\nARG BUSYBOX_VARIANT\nFROM busybox:stable${BUSYBOX_VARIANT}\n", {"BUSYBOX_VARIANT": "-musl"}, []),
    ("ARG TAG=latest\nFROM busybox:${TAG}\n", {}, []),
    ("ARG TAG\nFROM alpine:${TAG:-3.14}\n", {}, []),
]


@pytest.mark.parametrize("text,build_args,expected", CASES)
def test_semantic_rules_match_buildkit_examples(text, build_args, expected):
    assert found(text, images=ALPINE, build_args=build_args, all_stages=True) == ordered(expected)


def test_invalid_base_image_platform():
    text = "FROM busybox\nCOPY foo /foo\n"
    expected = [("InvalidBaseImagePlatform", 'Base image busybox was pulled with platform '
                 '"linux/arm64", expected "linux/amd64" for current build', 1)]
    assert found(text, images={"busybox": image("arm64")}) == expected
    assert found(text, images={"busybox": image("amd64")}) == []
    # a variant alone is no mismatch (BuildKit compares OS and architecture)
    arm = image("arm")
    arm["variant"] = "v6"
    assert found(text, images={"busybox": arm}, platform=Platform("linux", "arm", "v7")) == []


def test_base_image_shell_counts_for_json_args():
    text = "FROM custom\nCMD run me\n"
    assert found(text, images={"custom": image(shell=["/bin/bash", "-c"])}) == []
    assert found(text, images={"custom": image()}) == [
        ("JSONArgsRecommended", "JSON arguments recommended for CMD to prevent unintended "
         "behavior related to OS signals", 2)]


IGNORED = 'Attempting to {} file "{}" that is excluded by .dockerignore'


@pytest.mark.parametrize("ignore,text,expected", [
    ("\nDockerfile\n", "\nFROM scratch\nCOPY Dockerfile .\nADD Dockerfile /windy\n",
     [("CopyIgnoredFile", IGNORED.format("Copy", "Dockerfile"), 3),
      ("CopyIgnoredFile", IGNORED.format("Add", "Dockerfile"), 4)]),
    ("\nDockerfile\n", "# check=skip=CopyIgnoredFile\n\nFROM scratch\nCOPY Dockerfile .\n"
     "ADD Dockerfile /windy\n", []),
    ("\nfoobar\n", "\nFROM scratch AS base\nCOPY Dockerfile /foobar\nADD Dockerfile /windy\n\n"
     "FROM base\nCOPY --from=base /foobar /Dockerfile\n", []),
    ("\n**\n!Dockerfile\n", "\nFROM scratch\nCOPY ./Dockerfile .\n", []),
    ("\n**\n!Dockerfile\n", "\nFROM scratch\nCOPY . .\n", []),
    ("\n.*\n", "\nFROM scratch\nCOPY . .\n", []),
    ("\n*\n", "\nFROM scratch\nCOPY . .\n", [("CopyIgnoredFile", IGNORED.format("Copy", "."), 3)]),
    ("*/tmp/*\n", "FROM scratch\nCOPY ./forever/helloworld.txt /helloworld.txt\n", []),
    # a parent directory excluded excludes what is under it
    ("build\n", "FROM scratch\nCOPY build/out/app /app\n",
     [("CopyIgnoredFile", IGNORED.format("Copy", "build/out/app"), 2)]),
])
def test_copy_ignored_file(ignore, text, expected):
    assert found(text, ignore=IgnoreRules.parse(ignore), all_stages=True) == ordered(expected)


# -- columns ------------------------------------------------------------------------------------
# BuildKit locates findings by line only; lamina's column (grammar.checks documents it)
# is the 1-based column of what the rule is about on that line: the `$` of a variable,
# the `--platform` flag, the image, the source. A caret marks it (one per finding).

ARM = {"busybox": image("arm64")}
COLUMNS = [
    ("UndefinedArgInFrom", "FROM busybox:${VERSION}\n", {}, None, 1,
     "FROM busybox:${VERSION}",
     "             ^"),
    ("UndefinedArgInFrom", "FROM --platform=$BULIDPLATFORM scratch\n", {}, None, 1,
     "FROM --platform=$BULIDPLATFORM scratch",
     "                ^"),
    # `$foo`, not the `$foo` that starts `$foobar`
    ("UndefinedVar", "FROM alpine\nCOPY $foobar $foo /\n", {}, None, 2,
     "COPY $foobar $foo /",
     "     ^       ^"),
    # a single-quoted `$foo` is no reference; the `${` of the one that is
    ("UndefinedVar", "FROM alpine\nENV a='$foo' b=${foo}\n", {}, None, 2,
     "ENV a='$foo' b=${foo}",
     "               ^"),
    # an escaped `\$foo` is no reference either
    ("UndefinedVar", "FROM alpine\nENV a=\\$foo b=${foo:-x}/$foo\n", {}, None, 2,
     r"ENV a=\$foo b=${foo:-x}/$foo",
     r"              ^"),
    ("UndefinedVar", "FROM alpine\nRUN --mount=type=bind,target=$MNT true\n", {}, None, 2,
     "RUN --mount=type=bind,target=$MNT true",
     "                             ^"),
    ("RedundantTargetPlatform", "FROM  --platform=$TARGETPLATFORM scratch\n", {}, None, 1,
     "FROM  --platform=$TARGETPLATFORM scratch",
     "      ^"),
    ("FromPlatformFlagConstDisallowed", "FROM --platform=linux/amd64 scratch\n", {}, None, 1,
     "FROM --platform=linux/amd64 scratch",
     "     ^"),
    ("InvalidDefaultArgInFrom", "ARG VERSION\nFROM   busybox:$VERSION\n", {}, None, 2,
     "FROM   busybox:$VERSION",
     "       ^"),
    ("InvalidBaseImagePlatform", "FROM  busybox\n", ARM, None, 1,
     "FROM  busybox",
     "      ^"),
    # the source, not the same word in the --chown value
    ("CopyIgnoredFile", "FROM scratch\nCOPY --chown=app app /x\n", {}, "app\n", 2,
     "COPY --chown=app app /x",
     "                 ^"),
]


@pytest.mark.parametrize("rule,text,images,ignore,line,shown,caret", COLUMNS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(COLUMNS)])
def test_column_of_each_semantic_rule(rule, text, images, ignore, line, shown, caret):
    assert text.split("\n")[line - 1] == shown  # the case shows the finding's line
    findings = check_dockerfile(parse(text), base_config=lambda ref: {**ALPINE, **images}.get(ref),
                                platform=AMD64, all_stages=True,
                                ignore=IgnoreRules.parse(ignore) if ignore else None)
    hits = sorted((f.line, f.column) for f in findings if f.rule == rule)
    assert hits == [(line, i + 1) for i, c in enumerate(caret) if c == "^"]


def test_undefined_var_on_a_continuation_line_points_at_the_keyword():
    findings = check_dockerfile(parse("FROM alpine\n  ENV a=1 \\\n    b=$foo\n"),
                                base_config=ALPINE.get, platform=AMD64)
    assert [(f.rule, f.line, f.column) for f in findings] == [("UndefinedVar", 2, 3)]


# -- which stages a build checks ------------------------------------------------------------

def test_build_checks_only_the_stages_it_needs_and_check_all_of_them():
    # testAllTargetUnmarshal: a build of the last stage warns for it only
    text = "\nFROM scratch AS first\nCOPY $foo .\n\nFROM scratch AS second\nCOPY $bar .\n"
    assert found(text) == [("UndefinedVar", UNDEF.format("bar"), 6)]
    assert found(text, all_stages=True) == [("UndefinedVar", UNDEF.format("foo"), 3),
                                            ("UndefinedVar", UNDEF.format("bar"), 6)]
    assert found(text, target="first") == [("UndefinedVar", UNDEF.format("foo"), 3)]
    assert found(text, target="first", all_stages=True) == [("UndefinedVar", UNDEF.format("foo"), 3)]


def test_unreachable_stage_rules_only_under_check():
    # testLegacyKeyValueFormat: warnings of an unreachable stage only in the lint run
    text = "\nFROM scratch AS a\n\nFROM a AS b\nENV testkey value\nLABEL key value\n\nFROM a AS c\n"
    assert found(text) == []
    legacy = '"{0} key=value" should be used instead of legacy "{0} key value" format'
    assert found(text, all_stages=True) == [("LegacyKeyValueFormat", legacy.format("ENV"), 5),
                                            ("LegacyKeyValueFormat", legacy.format("LABEL"), 6)]


def test_stages_reached_through_copy_from_and_mounts_are_checked():
    text = ("FROM scratch AS a\nCMD x\nFROM scratch AS m\nENTRYPOINT y\nFROM scratch AS unused\nCMD z\n"
            "FROM scratch\nCOPY --from=a / /\nRUN --mount=from=m,target=/m true\n")
    assert [line for _, _, line in found(text)] == [2, 4]


# -- options ----------------------------------------------------------------------------------

def test_buildkit_dockerfile_check_build_arg_replaces_the_directive():
    text = "#check=skip=all\nFROM scratch as base\ncopy Dockerfile .\n"
    assert found(text) == []
    assert found(text, build_args={"BUILDKIT_DOCKERFILE_CHECK":
                                   "skip=ConsistentInstructionCasing;error=true"}) == [
        ("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 2)]
    text = "#check=error=true\nFROM scratch as base\ncopy Dockerfile .\n"
    assert found(text, build_args={"BUILDKIT_DOCKERFILE_CHECK": "skip=all"}) == []


def test_bad_check_build_arg_is_a_build_error():
    with pytest.raises(BuildError, match='^failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: '
                                         'invalid check option "nonsense"$'):
        found("FROM scratch\n", build_args={"BUILDKIT_DOCKERFILE_CHECK": "nonsense"})


def test_suggestions_are_buildkits():
    assert levenshtein("kitten", "sitting") == 3
    assert suggest("PAHT", ["HOME", "PATH"]) == "PATH"
    assert suggest("PATH", ["PAHT", "PATH"]) == ""  # an exact option means no suggestion
    assert suggest("ABCDEF", ["XYZ"]) == ""


# -- the command line -------------------------------------------------------------------------

def _project(tmp_path, dockerfile: str, ignore: str | None = None):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "a.txt").write_text("a\n")
    if ignore is not None:
        (ctx / ".dockerignore").write_text(ignore)
    return ctx


def _lamina(tmp_path, *args):
    return main(["--root", str(tmp_path / "store"), *args])


def test_check_exit_status_and_report(tmp_path, capsys):
    ctx = _project(tmp_path, "FROM scratch as base\ncopy a.txt .\n", ignore="a.txt\n")
    assert _lamina(tmp_path, "build", "--check", str(ctx)) == 1
    out = capsys.readouterr().out.splitlines()
    warns = [line for line in out if line.startswith("WARN: ")]
    assert warns == [
        "WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)",
        "WARN: ConsistentInstructionCasing: Command 'copy' should match the case of the command "
        "majority (uppercase) (line 2)",
        'WARN: CopyIgnoredFile: Attempting to Copy file "a.txt" that is excluded by .dockerignore '
        "(line 2)",
    ]
    assert any(":1:14:" in line for line in out)  # file:line:column of the AS keyword
    assert out[-1] == "Check complete, 3 warnings have been found!"


def test_check_report_explains_legacy_format_for_the_instruction_it_fired_on(tmp_path, capsys):
    ctx = _project(tmp_path, "FROM scratch\nLABEL  maintainer me\n")
    assert _lamina(tmp_path, "build", "--check", str(ctx)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ('WARN: LegacyKeyValueFormat: "LABEL key=value" should be used instead of '
                      'legacy "LABEL key value" format (line 2)')
    # file:line:column of the key, and the explanation names LABEL, not ENV
    assert out[1].startswith(f"  {ctx / 'Dockerfile'}:2:8: ")
    assert "`LABEL key value`" in out[1] and "ENV" not in out[1]


def test_check_clean_exits_zero(tmp_path, capsys):
    ctx = _project(tmp_path, "FROM scratch\nCOPY a.txt /a\n")
    assert _lamina(tmp_path, "build", "--check", str(ctx)) == 0
    assert capsys.readouterr().out.strip() == "Check complete, no warnings found."


def test_check_directive_skips_on_the_command_line(tmp_path, capsys):
    ctx = _project(tmp_path, "# check=skip=FromAsCasing,ConsistentInstructionCasing\n"
                             "FROM scratch as base\ncopy a.txt .\n")
    assert _lamina(tmp_path, "build", "--check", str(ctx)) == 0
    ctx2 = tmp_path / "two"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text("# check=skip=all\nFROM scratch as base\n")
    assert _lamina(tmp_path, "build", "--check", str(ctx2)) == 0


def test_check_does_not_build(tmp_path, capsys):
    ctx = _project(tmp_path, "FROM scratch\nCOPY missing-file /x\n")
    assert _lamina(tmp_path, "build", "--check", "-t", "x:1", str(ctx)) == 0
    capsys.readouterr()
    assert _lamina(tmp_path, "images", "-q") == 0
    assert capsys.readouterr().out.strip() == ""


def test_error_true_fails_the_build_before_any_step(tmp_path, capsys):
    ctx = _project(tmp_path, "# check=error=true\nFROM scratch as base\nCOPY a.txt /a\n")
    assert _lamina(tmp_path, "build", "--progress", "plain", str(ctx)) == 1
    captured = capsys.readouterr()
    assert "WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)" in captured.err
    assert "lint violation found for rules: FromAsCasing" in captured.err
    assert "COPY a.txt" not in captured.err and captured.out.strip() == ""


def test_malformed_check_directive_fails_the_build(tmp_path, capsys):
    ctx = _project(tmp_path, "# check=skip=all;error=perhaps\nFROM scratch\nCOPY a.txt /a\n")
    assert _lamina(tmp_path, "build", "--progress", "plain", str(ctx)) == 1
    err = capsys.readouterr().err
    assert "failed to parse check options" in err and "COPY a.txt" not in err


def test_error_true_with_nothing_found_builds_on(tmp_path, capsys):
    """error=true without findings is no error: the build goes past the checks (here it
    then fails on its own, on a missing file, which shows it started its steps)."""
    ctx = _project(tmp_path, "# check=error=true\nFROM scratch\nCOPY missing /a\n")
    assert _lamina(tmp_path, "build", "--progress", "plain", str(ctx)) == 1
    err = capsys.readouterr().err
    assert "lint violation" not in err and "WARN:" not in err


@pytest.mark.root
def test_warnings_in_a_normal_build(tmp_path, capsys):
    ctx = _project(tmp_path, "FROM scratch AS base\nCOPY a.txt /a\nCMD run\n")
    assert _lamina(tmp_path, "build", "--progress", "plain", str(ctx)) == 0
    captured = capsys.readouterr()
    assert ("WARN: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
            "behavior related to OS signals (line 3)") in captured.err
    assert captured.out.strip().startswith("sha256:")
    # and BuildKit's closing summary
    assert ("1 warning found:\n - JSONArgsRecommended: JSON arguments recommended for CMD to "
            "prevent unintended behavior related to OS signals (line 3)") in captured.err


def test_check_reads_base_image_variables_from_the_store(tmp_path, capsys):
    import subprocess

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello").write_text("hi\n")
    tar = tmp_path / "base.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    assert _lamina(tmp_path, "import", "-c", "ENV GOPATH=/go", str(tar), "base:1") == 0
    capsys.readouterr()
    ctx = _project(tmp_path, "FROM base:1\nCOPY $GOPATH/a.txt /a\nCOPY $GOPTH/a.txt /b\n")
    assert _lamina(tmp_path, "build", "--check", str(ctx)) == 1
    warns = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARN:")]
    assert warns == ["WARN: UndefinedVar: Usage of undefined variable '$GOPTH' "
                     "(did you mean $GOPATH?) (line 3)"]
