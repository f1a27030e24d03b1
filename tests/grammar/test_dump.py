"""`grammar.dump`: BuildKit's parser-dump form, and the port of Go's strconv.Quote.

Expected strings are written from BuildKit's Node.Dump rules (lower-cased
keyword, `%q` of the flag slice, each argument strconv.Quote'd, ONBUILD nested,
ENV/LABEL as key/value/separator triples) and Go's strconv.Quote documentation.
"""

from __future__ import annotations

import ast as pyast

from hypothesis import given, settings, strategies as st
import pytest

from lamina.grammar import dump, parse
from lamina.grammar.dump import go_quote


@pytest.mark.parametrize("value, quoted", [
    ("", '""'),
    ("plain text", '"plain text"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
    ("\x00\x01\x1b\x1f\x7f", '"\\x00\\x01\\x1b\\x1f\\x7f"'),
    ("é ü ñ 日本", '"é ü ñ 日本"'),                       # printable unicode stays
    ("\u00a0\u2028\u200b\ufeff", '"\\u00a0\\u2028\\u200b\\ufeff"'),  # spaces/format chars escaped
    ("\x85", '"\\u0085"'),
    ("\U0001F600", '"\U0001F600"'),                    # printable astral char stays
    ("\U000E0001\U0010FFFF", '"\\U000e0001\\U0010ffff"'),
    ("\ud800", '"\\ufffd"'),                           # not a valid rune
])
def test_go_quote(value, quoted):
    assert go_quote(value) == quoted


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_go_quote_reads_back_as_the_same_string(value):
    # Go's escapes used by Quote (\a \b \f \n \r \t \v \xNN \uNNNN \UNNNNNNNN) mean
    # the same in Python string literals.
    quoted = go_quote(value)
    assert quoted.startswith('"') and quoted.endswith('"')
    assert pyast.literal_eval(quoted) == value


DOCKERFILE = r"""# syntax=docker/dockerfile:1
FROM --platform=linux/amd64 golang:1.22 AS build
ARG VERSION=1.0 DEBUG
ENV GOPATH=/go PATH="/go/bin:$PATH"
ENV LEGACY some value
LABEL org.opencontainers.image.title="demo app"
WORKDIR /src
COPY --chown=1:1 go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -o /out/app .
COPY ["a b", "/dst/"]
ADD --checksum=sha256:0123 https://example.com/x.tgz /tmp/
EXPOSE 8080/tcp 9090
VOLUME ["/data"]
USER 65534:65534
HEALTHCHECK --interval=5s --retries=3 CMD ["/app", "health"]
HEALTHCHECK NONE
ONBUILD RUN echo "triggered"
ONBUILD COPY --from=build /out /out
STOPSIGNAL SIGINT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
CMD ["--port", "8080"]
ENTRYPOINT /app "quoted arg"
MAINTAINER someone
"""

EXPECTED = r"""(from ["--platform=linux/amd64"] "golang:1.22" "AS" "build")
(arg "VERSION=1.0" "DEBUG")
(env "GOPATH" "/go" "=" "PATH" "\"/go/bin:$PATH\"" "=")
(env "LEGACY" "some value" "")
(label "org.opencontainers.image.title" "\"demo app\"" "=")
(workdir "/src")
(copy ["--chown=1:1"] "go.mod" "go.sum" "./")
(run ["--mount=type=cache,target=/root/.cache/go-build"] "go build -o /out/app .")
(copy "a b" "/dst/")
(add ["--checksum=sha256:0123"] "https://example.com/x.tgz" "/tmp/")
(expose "8080/tcp" "9090")
(volume "/data")
(user "65534:65534")
(healthcheck ["--interval=5s" "--retries=3"] "CMD" "/app" "health")
(healthcheck "NONE")
(onbuild (run "echo \"triggered\""))
(onbuild (copy ["--from=build"] "/out" "/out"))
(stopsignal "SIGINT")
(shell "/bin/bash" "-o" "pipefail" "-c")
(cmd "--port" "8080")
(entrypoint "/app \"quoted arg\"")
(maintainer "someone")
"""


def test_dump_of_a_dockerfile_using_every_instruction():
    assert dump(parse(DOCKERFILE)) == EXPECTED


def test_dump_keeps_keyword_case_insensitivity_and_lowercases():
    assert dump(parse("FrOm a\nrun b")) == '(from "a")\n(run "b")\n'


def test_dump_of_continuation_and_escapes():
    text = 'FROM a\nRUN printf "a\\tb" \\\n  | tr a b\nCMD ["\\u0007bell"]\n'
    assert dump(parse(text)) == '(from "a")\n(run "printf \\"a\\\\tb\\"   | tr a b")\n(cmd "\\abell")\n'


def test_dump_flags_unquoted_like_buildkit():
    assert dump(parse('FROM a\nCOPY --chown="a b" --link x y')) == \
        '(from "a")\n(copy ["--chown=a b" "--link"] "x" "y")\n'


def test_dump_onbuild_with_flags_on_the_trigger():
    assert dump(parse("FROM a\nONBUILD RUN --network=none make")) == \
        '(from "a")\n(onbuild (run ["--network=none"] "make"))\n'
