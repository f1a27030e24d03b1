"""builder.plan: stages, target pruning, ARG/ENV scoping, resolved steps.

Expected values come from the Dockerfile reference (BuildKit's docs/reference.md:
"Scope", "Using ARG variables", "Predefined ARGs", "Automatic platform ARGs in the
global scope", "Environment replacement") and from BuildKit's dockerfile2llb."""

from __future__ import annotations

import re

import pytest

from lamina.builder.plan.cachekey import explain_miss, parent_scratch
from lamina.builder.errors import BuildError
from lamina.builder.plan.imageconfig import ImageConfig
from lamina.builder.plan.plan import plan_build
from lamina.builder.plan.stageplan import BaseImage, expand_onbuild, plan_all, plan_stage
from lamina.builder.plan.resolved import (
    Platform, ResolvedCopy, ResolvedRun, ResolvedUser,
)
from lamina.grammar import parse

HOST = Platform("linux", "amd64")


def make_plan(text: str, **kw):
    return plan_build(parse(text, path="Dockerfile"), platform=HOST, **kw)


def target_steps(text: str, bases=None, **kw):
    plan = make_plan(text, **kw)
    return plan_all(plan, bases)[plan.target].steps


def step(steps, keyword: str, nth: int = 0):
    return [s for s in steps if s.keyword == keyword][nth]


# ----------------------------------------------------------------- ARG scoping

def test_arg_is_in_scope_only_after_its_declaration():
    # reference, "Scope": USER ${username:-some_user}; ARG username; USER $username
    text = ("FROM scratch\nUSER ${username:-some_user}\nARG username\nUSER $username\n")
    steps = target_steps(text, build_args={"username": "what_user"})
    users = [s.resolved.user for s in steps if isinstance(s.resolved, ResolvedUser)]
    assert users == ["some_user", "what_user"]
    assert step(steps, "USER", 1).used_args == (("username", "what_user"),)
    assert step(steps, "USER", 0).used_args == ()


def test_env_overrides_arg_of_the_same_name():
    # reference, "Using ARG variables": the ENV value wins over --build-arg
    text = ("FROM scratch\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\n"
            "RUN echo $CONT_IMG_VER\n")
    steps = target_steps(text, build_args={"CONT_IMG_VER": "v2.0.1"})
    run = step(steps, "RUN")
    assert dict(run.env)["CONT_IMG_VER"] == "v1.0.0"
    assert run.used_args == ()  # the variable now holds the ENV value, not the arg's


def test_env_default_from_arg():
    text = ("FROM scratch\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}\n"
            "RUN echo $CONT_IMG_VER\n")
    plain = plan_all(make_plan(text))
    given = plan_all(make_plan(text, build_args={"CONT_IMG_VER": "v2.0.1"}))
    assert plain[0].final.config.get_env("CONT_IMG_VER") == "v1.0.0"
    assert given[0].final.config.get_env("CONT_IMG_VER") == "v2.0.1"


def test_arg_not_persisted_in_config_but_seen_by_run():
    steps = target_steps("FROM scratch\nARG A=1\nRUN true\n")
    run = step(steps, "RUN")
    assert dict(run.env)["A"] == "1"
    assert run.used_args == (("A", "1"),)
    assert run.config.get_env("A") is None
    assert run.history.created_by == "RUN |1 A=1 /bin/sh -c true # buildkit"


def test_global_arg_usable_in_from_only_unless_redeclared():
    # reference: ARG VERSION=latest / FROM busybox:$VERSION / ARG VERSION / RUN echo $VERSION
    text = ("ARG VERSION=latest\nFROM busybox:$VERSION\nRUN echo $VERSION\n"
            "ARG VERSION\nRUN echo $VERSION\n")
    plan = make_plan(text)
    st = plan.stages[0]
    assert st.base == "busybox:latest" and st.base_image == "busybox:latest"
    assert st.global_args_used == ("VERSION",)
    steps = plan_stage(plan, st, base=BaseImage(ImageConfig())).steps
    assert "VERSION" not in dict(step(steps, "RUN", 0).env)
    assert dict(step(steps, "RUN", 1).env)["VERSION"] == "latest"
    # the bare re-declaration takes the global value, and history says so
    assert step(steps, "ARG").history.created_by == "ARG VERSION=latest"


def test_build_arg_overrides_global_and_stage_defaults():
    text = "ARG VERSION=latest\nFROM busybox:$VERSION\nARG VERSION\nARG B=2\nRUN true\n"
    plan = make_plan(text, build_args={"VERSION": "1.36", "B": "9"})
    assert plan.stages[0].base == "busybox:1.36"
    run = step(plan_all(plan)[0].steps, "RUN")
    assert dict(run.used_args) == {"VERSION": "1.36", "B": "9"}
    assert plan.warnings == ()


def test_arg_default_references_earlier_args():
    text = "FROM scratch\nARG A=1\nARG B=${A}2 C=$B-x\nRUN true\n"
    assert dict(step(target_steps(text), "RUN").used_args) == {"A": "1", "B": "12", "C": "12-x"}
    given = step(target_steps(text, build_args={"A": "5"}), "RUN")
    assert dict(given.used_args) == {"A": "5", "B": "52", "C": "52-x"}


def test_global_defaults_reference_earlier_globals():
    text = "ARG REG=docker.io\nARG IMG=$REG/library/alpine\nFROM ${IMG}:3\n"
    assert make_plan(text).stages[0].base == "docker.io/library/alpine:3"
    assert make_plan(text, build_args={"REG": "quay.io"}).stages[0].base == \
        "quay.io/library/alpine:3"


def test_arg_after_inherited_env_overrides_it_for_the_build():
    base = BaseImage(ImageConfig(env=(("PATH", "/bin"), ("MODE", "base"))))
    text = "FROM img\nRUN a\nARG MODE=build\nRUN b\n"
    steps = target_steps(text, bases={0: base})
    assert dict(step(steps, "RUN", 0).env)["MODE"] == "base"
    assert dict(step(steps, "RUN", 1).env)["MODE"] == "build"
    assert step(steps, "RUN", 1).config.get_env("MODE") == "base"


def test_unconsumed_build_args_warning():
    plan = make_plan("FROM scratch\nARG USED\n", build_args={"USED": "1", "ZED": "2",
                                                             "ALPHA": "3", "HTTP_PROXY": "p"})
    assert plan.warnings == ("[Warning] One or more build-args [ALPHA ZED] were not consumed",)


def test_predefined_proxy_args():
    text = "FROM scratch\nRUN curl x\n"
    plan = make_plan(text, build_args={"HTTP_PROXY": "http://proxy:3128", "no_proxy": "local"})
    run = step(plan_all(plan)[0].steps, "RUN")
    assert set(run.proxy_env) == {("HTTP_PROXY", "http://proxy:3128"), ("no_proxy", "local")}
    assert "HTTP_PROXY" not in dict(run.env)
    assert dict(run.run_env())["HTTP_PROXY"] == "http://proxy:3128"
    assert run.history.created_by == "RUN /bin/sh -c curl x # buildkit"
    assert "proxy" not in run.cache_inputs(parent_scratch()).canonical().decode()
    # changing the proxy does not invalidate the step
    other = make_plan(text, build_args={"HTTP_PROXY": "http://other:1"})
    run2 = step(plan_all(other)[0].steps, "RUN")
    assert run2.cache_inputs("scratch").key() == run.cache_inputs("scratch").key()


def test_declared_proxy_arg_is_an_ordinary_arg():
    text = "FROM scratch\nARG HTTP_PROXY\nRUN curl x\n"
    run = step(target_steps(text, build_args={"HTTP_PROXY": "http://p"}), "RUN")
    assert dict(run.env)["HTTP_PROXY"] == "http://p"
    assert run.history.created_by == "RUN |1 HTTP_PROXY=http://p /bin/sh -c curl x # buildkit"
    # the RUN gets it under both names all the same (BuildKit's proxy list)
    assert dict(run.run_env())["http_proxy"] == "http://p"


def test_proxy_args_reach_a_run_under_both_names_over_its_env():
    # BuildKit: proxyEnvFromBuildArgs (EqualFold, keys sorted: a lower-case spelling's
    # value wins) and exec.go proxyEnvList (UPPER=v, lower=v, in the order HTTP, HTTPS,
    # FTP, NO, ALL) applied after the step's env, replacing entries in place
    text = "FROM scratch\nENV FTP_PROXY=from-env A=1\nARG no_proxy=default\nRUN curl x\n"
    run = step(target_steps(text, build_args={
        "https_proxy": "s-lower", "HTTPS_PROXY": "s-upper", "FTP_PROXY": "f", "no_proxy": "n",
        "all_proxy": "socks5://a", "OTHER": "o"}), "RUN")
    env = list(run.run_env())
    assert env[-6:] == [("HTTPS_PROXY", "s-lower"), ("https_proxy", "s-lower"),
                        ("ftp_proxy", "f"), ("NO_PROXY", "n"), ("ALL_PROXY", "socks5://a"),
                        ("all_proxy", "socks5://a")]
    d = dict(env)
    assert (d["FTP_PROXY"], d["no_proxy"], d["A"]) == ("f", "n", "1")
    assert "OTHER" not in d and "HTTP_PROXY" not in d
    assert [k for k, _ in env].index("FTP_PROXY") < [k for k, _ in env].index("A")


def test_automatic_platform_args():
    text = ("FROM busybox:$TARGETARCH AS a\nRUN echo $TARGETARCH\nARG TARGETARCH\n"
            "ARG TARGETPLATFORM BUILDOS\nRUN echo $TARGETARCH\n")
    plan = make_plan(text)
    assert plan.stages[0].base == "busybox:amd64"
    steps = plan_all(plan, {0: BaseImage(ImageConfig())})[0].steps
    assert "TARGETARCH" not in dict(step(steps, "RUN", 0).env)
    env = dict(step(steps, "RUN", 1).env)
    assert (env["TARGETARCH"], env["TARGETPLATFORM"], env["BUILDOS"]) == \
        ("amd64", "linux/amd64", "linux")
    arm = plan_build(parse("FROM x:$TARGETPLATFORM-$TARGETVARIANT"),
                     platform=Platform("linux", "arm", "v7"))
    assert arm.stages[0].base == "x:linux/arm/v7-v7"


def test_arg_expansion_error_is_placed():
    text = "FROM scratch\nARG A\nCOPY ${A:?required} /\n"
    with pytest.raises(BuildError) as err:
        target_steps(text)
    assert err.value.line == 3 and err.value.file == "Dockerfile"
    assert 'failed to process "${A:?required}": A: required' in str(err.value)
    assert err.value.source_line == "COPY ${A:?required} /"


# ----------------------------------------------------------------- stages and target

MULTI = """\
FROM scratch AS a
COPY x /x
FROM scratch AS b
COPY y /y
FROM a AS c
COPY --from=b /y /z
FROM scratch AS unused
RUN exit 1
FROM c
COPY --from=1 /y /w
RUN --mount=type=bind,from=a,target=/mnt true
"""


def test_pruning_order_and_levels():
    plan = make_plan(MULTI)
    assert plan.order() == (0, 1, 2, 4)  # "unused" is not planned
    assert plan.target == 4 and plan.target_stage.name is None
    assert plan.stage("c").stage_deps == (0, 1)
    assert plan.stage(4).stage_deps == (2, 1, 0)
    assert plan.levels() == ((0, 1), (2,), (4,))
    assert plan.independent(0, 1)
    assert not plan.independent(0, 2) and not plan.independent(4, 1)
    assert plan.needs(4) == {0, 1, 2}


def test_target_selects_and_prunes():
    plan = make_plan(MULTI, target="B")
    assert plan.order() == (1,) and plan.target == 1
    plan = make_plan(MULTI, target="unused")
    assert plan.order() == (3,)


def test_unknown_target_lists_stages():
    with pytest.raises(BuildError, match=r'target stage "nope" could not be found '
                                         r'\(stages: a, b, c, unused\)'):
        make_plan(MULTI, target="nope")


def test_unused_failing_stage_is_not_planned():
    text = ("FROM ${MISSING:?nobase} AS broken\nCOPY --from=nowhere ${UNSET:?x} /\n"
            "FROM --platform=linux/s390x scratch AS foreign\n"
            "FROM scratch AS good\nCOPY a /a\n")
    plan = make_plan(text, target="good")
    assert plan.order() == (2,)
    assert len(plan_all(plan)[2].steps) == 1
    with pytest.raises(BuildError, match="nobase"):
        make_plan(text, target="broken")
    with pytest.raises(BuildError, match="only linux/amd64 can be built here"):
        make_plan(text, target="foreign")


def test_from_stage_and_copy_from_names_are_case_insensitive():
    text = "FROM scratch AS Builder\nFROM builder\nCOPY --from=BUILDER /a /a\n"
    plan = make_plan(text)
    assert plan.stage(1).base_stage == 0 and plan.stage(1).stage_deps == (0,)
    copy = step(plan_all(plan)[1].steps, "COPY").resolved
    assert isinstance(copy, ResolvedCopy) and copy.from_stage == 0 and copy.from_image is None


def test_copy_from_image_and_index():
    plan = make_plan("FROM scratch\nCOPY --from=nginx:latest /a /a\nFROM scratch\n"
                     "COPY --from=0 /a /a\n")
    assert plan.stage(0).image_deps == ("nginx:latest",)
    copy = step(plan_all(plan)[0].steps, "COPY").resolved
    assert copy.from_image == "nginx:latest" and copy.from_stage is None
    assert plan.stage(1).stage_deps == (0,)


def test_from_names_a_stage_only_if_defined_earlier():
    plan = make_plan("FROM later\nFROM scratch AS later\n", target=None)
    # BuildKit: a FROM can only name an earlier stage, otherwise it is an image
    assert plan.order() == (1,)
    plan = make_plan("FROM later AS first\nFROM scratch AS later\n", target="first")
    assert plan.stage(0).base_image == "later"


@pytest.mark.parametrize("text,message,line", [
    ("FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\nCOPY --from=a / /\n",
     "circular dependency detected on stage", 2),
    ("FROM scratch AS a\nCOPY --from=a / /\n", "circular dependency detected on stage: a", 2),
    ("FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\n",
     'cannot copy from stage "b", it needs to be defined before current stage "a"', 2),
    ("FROM scratch\nCOPY --from=7 / /\n", "invalid stage index 7", 2),
    # in a stage the target does not use: BuildKit converts and checks every stage
    # (docker 20.10's BuildKit refuses these too: test_differential_buildkit)
    ("FROM scratch\nCOPY --from=2 / /\nFROM scratch\n", "invalid stage index 2", 2),
    ("FROM scratch\nCOPY --from=0 / /\nFROM scratch\n", "circular dependency detected", 2),
    ("FROM scratch\nARG S=0\nCOPY --from=$S / /\nFROM scratch\n",
     "variable expansion is not supported for --from", 3),
    ("FROM scratch\nARG S=x\nCOPY --from=$S / /\n",
     "variable expansion is not supported for --from", 3),
    ("FROM --platform=linux/arm64 scratch\n",
     "FROM --platform=linux/arm64: only linux/amd64 can be built here", 1),
    ("ARG P=windows/amd64\nFROM --platform=$P scratch\n", "only linux/amd64", 2),
    ("FROM $NOTHING\n", "base name ($NOTHING) should not be blank", 1),
])
def test_graph_errors(text, message, line):
    with pytest.raises(BuildError, match=re.escape(message)) as err:
        make_plan(text, target="a" if "AS a" in text else None)
    assert err.value.line == line


def test_unused_stage_may_name_a_later_stage():
    # dispatch-time check in BuildKit: only for the stages the target needs
    plan = make_plan("FROM scratch\nCOPY --from=1 / /\nFROM scratch\n")
    assert plan.order() == (1,)


def test_from_platform_matching_host_is_fine():
    plan = make_plan("FROM --platform=$BUILDPLATFORM scratch\nFROM --platform=linux/amd64 scratch\n")
    assert plan.stages[-1].platform == HOST


def test_no_stage_errors():
    with pytest.raises(BuildError, match="no build stage in current context"):
        make_plan("ENV A=1\nFROM scratch\n")
    with pytest.raises(BuildError, match="contains no stages"):
        make_plan("ARG A=1\n")


# ----------------------------------------------------------------- resolved steps and config

def test_env_replacement_uses_values_before_the_instruction():
    # reference, "Environment replacement": def=hello, ghi=bye
    text = "FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n"
    cfg = plan_all(make_plan(text))[0].final.config
    assert (cfg.get_env("abc"), cfg.get_env("def"), cfg.get_env("ghi")) == ("bye", "hello", "bye")


def test_workdir_and_copy_destinations():
    text = ("FROM scratch\nENV DIR=/srv\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nCOPY x .\n"
            "COPY x y\nCOPY x y/\nCOPY x /abs\nWORKDIR $DIR/app\nCOPY [\"x\", \"$DIR/z/\"]\n")
    steps = target_steps(text)
    workdirs = [s.resolved.path for s in steps if s.keyword == "WORKDIR"]
    assert workdirs == ["/a", "/a/b", "/a/c", "/srv/app"]
    dests = [s.resolved.dest_path for s in steps if s.keyword == "COPY"]
    assert dests == ["/a/c/", "/a/c/y", "/a/c/y/", "/abs", "/srv/z/"]
    assert step(steps, "WORKDIR", 3).history.created_by == "WORKDIR /srv/app"


def test_shell_form_cmd_and_entrypoint_use_the_shell():
    text = ('FROM scratch\nCMD ["base"]\nSHELL ["/bin/bash", "-c"]\nCMD echo "$HOME"\n'
            "ENTRYPOINT exec app\n")
    sp = plan_all(make_plan(text))[0]
    cfg = sp.final.config
    assert cfg.cmd == ("/bin/bash", "-c", 'echo "$HOME"')  # text is not expanded
    assert cfg.entrypoint == ("/bin/bash", "-c", "exec app")  # CMD set earlier: kept
    assert [h.created_by for h in sp.final.history] == [
        'CMD ["base"]', "SHELL [/bin/bash -c]", 'CMD ["/bin/bash" "-c" "echo \\"$HOME\\""]',
        'ENTRYPOINT ["/bin/bash" "-c" "exec app"]']


def test_entrypoint_clears_cmd_of_base_image_and_base_stage():
    base = BaseImage(ImageConfig(cmd=("bash",)))
    assert plan_all(make_plan("FROM img\nENTRYPOINT [\"/e\"]\n"), {0: base})[0].config.cmd is None
    text = 'FROM scratch AS a\nCMD ["x"]\nFROM a\nENTRYPOINT ["/e"]\n'
    sp = plan_all(make_plan(text))
    assert sp[0].config.cmd == ("x",) and sp[1].config.cmd is None


def test_every_metadata_instruction_through_the_plan():
    text = ("FROM scratch\nMAINTAINER Jane\nLABEL a=1 \"b c\"=\"d e\"\nEXPOSE 80 53/udp 8000-8001\n"
            "VOLUME /data [\"/x\"]\nVOLUME [\"/v1\", \"/v2\"]\nUSER 1000\nSTOPSIGNAL SIGTERM\n"
            "HEALTHCHECK --interval=5m --timeout=3s --retries=3 CMD curl -f http://localhost/\n"
            "ONBUILD RUN echo \\\n  later\n")
    sp = plan_all(make_plan(text))[0]
    assert sp.final.author == "Jane"
    d = sp.config.to_oci_dict()
    assert d["Labels"] == {"a": "1", "b c": "d e"}
    assert d["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}
    # shell-form words are expanded one by one, quotes removed (BuildKit's ProcessWord)
    assert d["Volumes"] == {"/data": {}, "[/x]": {}, "/v1": {}, "/v2": {}}
    assert d["User"] == "1000" and d["StopSignal"] == "SIGTERM"
    assert d["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f http://localhost/"],
                                "Interval": 300_000_000_000, "Timeout": 3_000_000_000,
                                "Retries": 3}
    assert d["OnBuild"] == ["RUN echo   later"]
    texts = [h.created_by for h in sp.final.history]
    assert texts == [
        "MAINTAINER Jane", "LABEL a=1 b c=d e", "EXPOSE [53/udp 80/tcp 8000/tcp 8001/tcp]",
        'VOLUME [/data [/x]]', "VOLUME [/v1 /v2]", "USER 1000", "STOPSIGNAL SIGTERM",
        "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/] Interval:5m0s Timeout:3s "
        "StartPeriod:0s StartInterval:0s Retries:3}",
    ]
    assert all(h.empty_layer for h in sp.final.history)


@pytest.mark.parametrize("line,message", [
    ("STOPSIGNAL SIGNOPE", "invalid signal: SIGNOPE"),
    ("EXPOSE 80/xyz", "invalid proto: xyz"),
    ("ARG N=foo\nRUN --network=$N true", 'unsupported network mode "foo"'),
    ("RUN --mount=type=cache true", 'invalid mount target "/"'),  # no target: the workdir, here /
    ("RUN --mount=type=nope,target=/x true", 'unsupported mount type "nope"'),
    ("COPY --chmod=999 a b", "invalid chmod parameter"),
    ("COPY http://example.com/x /x", "source can't be a URL for COPY"),
])
def test_resolve_errors_carry_the_line(line, message):
    text = "FROM scratch\n" + line + "\n"
    with pytest.raises(BuildError, match=message) as err:
        target_steps(text)
    assert err.value.line == text.count("\n")
    assert err.value.source_line == line.split("\n")[-1]


def test_run_forms_and_heredocs():
    text = ("FROM scratch\nRUN echo $HOME\nRUN [\"/bin/true\", \"$HOME\"]\n"
            "RUN <<EOF\necho one\necho two\nEOF\n"
            "RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n"
            "RUN cat <<A > /a && cat <<-B > /b\nx\nA\n\ty\n\tB\n")
    runs = [s.resolved for s in target_steps(text) if isinstance(s.resolved, ResolvedRun)]
    assert runs[0].argv == ("/bin/sh", "-c", "echo $HOME") and runs[0].shell_form
    assert runs[1].argv == ("/bin/true", "$HOME") and not runs[1].shell_form
    assert runs[2].argv == ("/bin/sh", "-c", "echo one\necho two\n")
    assert runs[3].argv == ("/bin/sh", "-c", "/dev/pipes/EOF")
    assert runs[3].files[0].data == "#!/usr/bin/env python3\nprint(1)\n"
    assert runs[3].files[0].mode == 0o755
    # several heredocs: the line, then each body and its delimiter (for the shell)
    assert runs[4].argv == ("/bin/sh", "-c", "cat <<A > /a && cat <<-B > /b\nx\nA\n\ty\nB")


def test_copy_heredoc_expansion():
    text = ("FROM scratch\nARG NAME=world\nCOPY <<EOF <<'RAW' /dst/\nhello $NAME\nEOF\n"
            "keep $NAME\nRAW\n")
    copy = step(target_steps(text), "COPY")
    inline = {f.name: f.data for f in copy.resolved.inline}
    assert inline == {"EOF": "hello world\n", "RAW": "keep $NAME\n"}
    assert copy.used_args == (("NAME", "world"),)
    assert copy.history.created_by == "COPY <<EOF <<RAW /dst/ # buildkit"


def test_run_mounts_defaults_and_no_secret_content():
    text = ("FROM scratch AS src\nFROM scratch\nWORKDIR /w\n"
            "RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=tok "
            "--mount=type=bind,from=src,target=rel --mount=type=ssh true\n")
    run = step(target_steps(text), "RUN")
    cache, secret, bind, ssh = run.resolved.mounts
    assert (cache.id, cache.sharing, cache.readonly) == ("/root/.cache", "shared", False)
    assert (secret.id, secret.target, secret.readonly) == ("tok", "/run/secrets/tok", True)
    assert (bind.from_stage, bind.target, bind.readonly) == (0, "/w/rel", True)
    assert (ssh.id, ssh.target, ssh.mode) == ("default", "/run/buildkit/ssh_agent.0", 0o600)
    spec = run.cache_inputs("scratch").mounts[1]
    assert '"id":"tok"' in spec and '"target":"/run/secrets/tok"' in spec


# ----------------------------------------------------------------- ONBUILD

def test_onbuild_triggers_of_a_base_image_run_first():
    base = BaseImage(ImageConfig(env=(("PATH", "/bin"),),
                                 on_build=("ENV FROM_TRIGGER=1", "RUN echo $FROM_TRIGGER")))
    sp = plan_all(make_plan("FROM img\nRUN own\nONBUILD RUN mine\n"), {0: base})[0]
    assert [s.display for s in sp.steps] == [
        "ONBUILD ENV FROM_TRIGGER=1", "ONBUILD RUN echo $FROM_TRIGGER", "RUN own",
        "ONBUILD RUN mine"]
    assert [s.onbuild for s in sp.steps] == [True, True, False, False]
    assert sp.steps[0].line == 1  # placed at the FROM line
    assert sp.config.on_build == ("RUN mine",)  # the base's triggers are consumed
    assert sp.config.get_env("FROM_TRIGGER") == "1"


def test_onbuild_of_a_base_stage_runs_in_the_child_only():
    text = "FROM scratch AS base\nONBUILD ENV X=1\nFROM base\nRUN true\n"
    sp = plan_all(make_plan(text))
    assert sp[0].config.on_build == ("ENV X=1",) and sp[0].config.get_env("X") is None
    assert sp[1].steps[0].onbuild and sp[1].config.get_env("X") == "1"
    assert sp[1].config.on_build == ()


def test_expand_onbuild_rejects_bad_triggers():
    with pytest.raises(BuildError, match="isn't allowed as an ONBUILD trigger"):
        expand_onbuild(["FROM alpine"])
    with pytest.raises(BuildError, match="single expression"):
        expand_onbuild(["RUN a\nRUN b"])
    assert expand_onbuild(["COPY . /src"])[0].keyword == "COPY"


# ----------------------------------------------------------------- cache inputs from the plan

KEYED = "FROM scratch\nRUN before\nARG GREETING=hello\nCOPY x /x\nRUN echo $GREETING\n"


def _keys(**kw):
    steps = target_steps(KEYED, **kw)
    return [s.cache_inputs(parent_scratch(), content="c") for s in steps
            if s.keyword in ("RUN", "COPY")]


def test_build_arg_invalidates_only_steps_after_its_declaration():
    a, b = _keys(), _keys(build_args={"GREETING": "hi"})
    assert a[0].key() == b[0].key()  # RUN before the ARG
    assert a[1].key() == b[1].key()  # COPY does not use the arg
    assert a[2].key() != b[2].key()  # RUN sees every arg in scope
    assert explain_miss(a[2], b[2]) == 'ARG GREETING changed: "hello" -> "hi"'


def test_plan_is_deterministic():
    assert _keys() == _keys()
    assert [k.key() for k in _keys()] == [k.key() for k in _keys()]


def test_instruction_and_workdir_changes_change_keys():
    a = target_steps("FROM scratch\nWORKDIR /a\nRUN x\n")
    b = target_steps("FROM scratch\nWORKDIR /b\nRUN x\n")
    ka, kb = step(a, "RUN").cache_inputs("scratch"), step(b, "RUN").cache_inputs("scratch")
    assert ka.key() != kb.key()
    assert explain_miss(ka, kb) == 'WORKDIR changed: "/a" -> "/b"'
    c = target_steps("FROM scratch\nWORKDIR /a\nRUN y\n")
    assert explain_miss(ka, step(c, "RUN").cache_inputs("scratch")) == "instruction text changed"


def test_context_reads():
    text = ("FROM scratch AS s\nFROM scratch\nCOPY a b /d/\nCOPY --from=s /x /y\n"
            "ADD https://example.com/f /f\nRUN --mount=type=bind,source=src,target=/src "
            "--mount=type=bind,from=s,target=/s --mount=type=bind,target=/ctx true\n")
    reads = [s.context_reads() for s in target_steps(text)]
    assert reads == [("a", "b"), (), (), ("src", "/")]


# ----------------------------------------------------------------- differential: buildah

ORACLE = """\
FROM scratch
ARG username
USER ${username:-some_user}
ARG CONT_IMG_VER
ENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}
ENV abc=hello
ENV abc=bye def=$abc
ENV ghi=$abc
LABEL a=1 "b c"="d e" c=$abc
EXPOSE 80 53/udp
VOLUME ["/v1", "/v2"]
VOLUME /data
WORKDIR /a
WORKDIR b
WORKDIR ../c
STOPSIGNAL SIGTERM
SHELL ["/bin/bash", "-c"]
CMD ["serve", "--port", "80"]
ENTRYPOINT ["/init"]
HEALTHCHECK --interval=5m --timeout=3s --retries=3 CMD curl -f http://localhost/
ONBUILD RUN echo later
"""


@pytest.mark.root
@pytest.mark.interop
def test_config_matches_buildah(tmp_path):
    """The config our plan computes equals what buildah (docker-format) commits for a
    metadata-only Dockerfile (fields where buildah follows docker's semantics)."""
    import json
    import subprocess

    from tests.conftest import require_tool

    buildah = require_tool("buildah")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(ORACLE)
    base = [buildah, "--storage-driver", "vfs", "--root", str(tmp_path / "root"),
            "--runroot", str(tmp_path / "runroot")]
    subprocess.run(base + ["bud", "--format", "docker", "--isolation", "chroot",
                           "--build-arg", "username=what_user", "-t", "lamina-oracle",
                           str(tmp_path / "ctx")], check=True, capture_output=True, timeout=300)
    out = subprocess.run(base + ["inspect", "--type", "image", "lamina-oracle"], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    theirs = json.loads(out)["Docker"]["config"]
    theirs["Labels"].pop("io.buildah.version", None)
    ours = plan_all(make_plan(ORACLE, build_args={"username": "what_user"}))[0].config.to_oci_dict()
    for key in ("User", "Env", "Labels", "ExposedPorts", "Volumes", "WorkingDir", "StopSignal",
                "Cmd", "Entrypoint", "Healthcheck", "OnBuild", "Shell"):
        assert ours.get(key) == theirs.get(key), key


# ----------------------------------------------------------------- property: arg scope and keys

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LINES = ["RUN echo step", "ARG A=default", "ARG A", "ENV A=fixed", "ENV B=$A", "COPY f /f"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(LINES), min_size=1, max_size=8))
def test_changing_a_build_arg_changes_exactly_the_run_steps_that_see_it(lines):
    text = "FROM scratch\n" + "\n".join(lines) + "\n"

    def keys(**kw):
        steps = target_steps(text, **kw)
        return [s.cache_inputs(parent_scratch(), content="c").key() for s in steps
                if s.keyword == "RUN"]

    before, after = keys(), keys(build_args={"A": "changed"})
    # the reference's rule: a RUN sees A as an arg once some `ARG A` declared it and
    # no later `ENV A=...` replaced it (ENV wins over ARG); an ENV B=$A evaluated
    # while A was the arg carries the value on in the environment
    expected, arg_live, b_from_arg = [], False, False
    for line in lines:
        if line.startswith("ARG A"):
            arg_live = True
        elif line == "ENV A=fixed":
            arg_live = False
        elif line == "ENV B=$A":
            b_from_arg = arg_live
        elif line.startswith("RUN"):
            expected.append(arg_live or b_from_arg)
    assert [a != b for a, b in zip(before, after)] == expected


@pytest.mark.parametrize("syntax", ["docker/dockerfile:1", "docker/dockerfile:1.7-labs",
                                    "docker.io/docker/dockerfile:1.4",
                                    "docker/dockerfile-upstream:master",
                                    "docker/dockerfile@sha256:" + "a" * 64])
def test_syntax_of_the_dockerfile_frontend_warns_nothing(syntax):
    assert make_plan(f"# syntax={syntax}\nFROM scratch\n").warnings == ()


@pytest.mark.parametrize("syntax", ["tonistiigi/dockerfile:runmount", "example.com/team/frontend:2",
                                    "localhost:5000/docker/dockerfile:1"])
def test_syntax_naming_another_frontend_warns(syntax):
    (warning,) = make_plan(f"# syntax={syntax}\nFROM scratch\n").warnings
    assert f"# syntax={syntax}" in warning and ":1:" in warning and "does not run" in warning
