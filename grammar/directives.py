"""Parser directives: `# syntax=…`, `# escape=…`, `# check=…` at the top of a file.

Owns BuildKit's directive rules: a directive is a comment line of the form
`# name = value` (name case-insensitive, one of syntax/escape/check); directives
are only recognised before the first line that is not one (any other comment, a
blank line or an instruction ends them); each may appear once; `escape` must be
a backslash or a backtick.

Also owns the value of the `check` directive (BuildKit's build-check options,
`skip=RULE,...|all;error=true|false;experimental=...`): `parse_check_options`, and
the per-instruction form (a `# check=skip=RULE` comment right before an
instruction adds skips for that instruction only): `check_options_in_comments`.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

from lamina.grammar.errors import DockerfileError
from lamina.grammar.goquote import go_quote
from lamina.grammar.words import trim_left_space

VALID_DIRECTIVES = ("syntax", "escape", "check")
# Go's \s is [\t\n\f\r ]
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")


class DirectiveParser:
    """Line-by-line directive recognition with BuildKit's state (done, seen)."""

    def __init__(self) -> None:
        self.done = False
        self.seen: dict[str, tuple[str, int]] = {}
        self.escape = "\\"

    def feed(self, line: str, line_no: int) -> tuple[str, str] | None:
        """Look at one (newline-trimmed) line; return (name, value) if it is a directive.

        Raises DockerfileError (without file) for a repeated directive or a bad
        escape character.
        """
        if self.done:
            return None
        if not line.startswith("#"):
            self.done = True
            return None
        match = _DIRECTIVE.match(trim_left_space(line[1:]))
        if match is None:
            self.done = True
            return None
        name = match.group(1).lower()
        if name not in VALID_DIRECTIVES:
            self.done = True
            return None
        value = match.group(2)
        if name in self.seen:
            raise DockerfileError(f"only one {name} parser directive can be used",
                                  line=line_no, column=1, source_line=line)
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(
                    f"invalid escape token '{value}' does not match ` or \\",
                    line=line_no, column=line.find(value, line.index("=")) + 1, source_line=line)
            self.escape = value
        self.seen[name] = (value, line_no)
        return name, value


@dataclass(frozen=True)
class CheckOptions:
    """What the `check` directive (or BUILDKIT_DOCKERFILE_CHECK) asks of the build checks."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False

    def skips(self, rule: str) -> bool:
        return self.skip_all or rule in self.skip

    def merged(self, other: "CheckOptions") -> "CheckOptions":
        """These options with another's skips added (`error` stays as it is: a
        per-instruction comment cannot turn findings into errors)."""
        return CheckOptions(skip=self.skip | other.skip, skip_all=self.skip_all or other.skip_all,
                            error=self.error,
                            experimental=self.experimental | other.experimental,
                            experimental_all=self.experimental_all or other.experimental_all)


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _rule_list(value: str) -> tuple[bool, frozenset[str]]:
    value = value.strip()
    if value == "all":
        return True, frozenset()
    return False, frozenset(rule.strip() for rule in value.split(","))


def parse_check_options(value: str) -> CheckOptions:
    """The options of `# check=VALUE`; ValueError (BuildKit's message) when malformed.

    Up to three `;`-separated `key=value` parts: `skip` (rule names or `all`),
    `error` (a Go boolean) and `experimental` (rule names or `all`).
    """
    value = value.strip()
    if value == "":
        return CheckOptions()
    skip: frozenset[str] = frozenset()
    experimental: frozenset[str] = frozenset()
    skip_all = experimental_all = error = False
    for part in value.split(";", 2):
        key, eq, val = part.partition("=")
        if not eq:
            raise ValueError(f"invalid check option {go_quote(part)}")
        key = key.strip()
        if key == "skip":
            skip_all, skip = _rule_list(val)
        elif key == "experimental":
            experimental_all, experimental = _rule_list(val)
        elif key == "error":
            flag = val.strip()
            if flag not in _GO_TRUE + _GO_FALSE:
                raise ValueError(f"failed to parse check option {go_quote(part)}: "
                                 f"strconv.ParseBool: parsing {go_quote(flag)}: invalid syntax")
            error = flag in _GO_TRUE
        else:
            raise ValueError(f"invalid check option {go_quote(key)}")
    return CheckOptions(skip=skip, skip_all=skip_all, error=error,
                        experimental=experimental, experimental_all=experimental_all)


def check_options_in_comments(comments: tuple[str, ...] | list[str]) -> CheckOptions | None:
    """The first `check=...` among an instruction's preceding comments (its value up to
    the first space, so `# check=skip=X // why` works); None when there is none or
    it is malformed (then BuildKit ignores it)."""
    for comment in comments:
        match = _DIRECTIVE.match(trim_left_space(comment))
        if match is None or match.group(1).lower() != "check":
            continue
        try:
            return parse_check_options(match.group(2).split(" ", 1)[0])
        except ValueError:
            return None
    return None
