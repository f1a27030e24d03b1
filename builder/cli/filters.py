"""`--filter KEY=VALUE` of `lamina images`, as docker's image list filters:

- `dangling=true|false` - images without a tag / with a tag or a repository digest
  (docker's daemon: an image known only by digest, e.g. pulled by digest, is in both
  lists);
- `reference=PATTERN` - a tag whose familiar form `name:tag`, or a repository digest
  whose `name@digest`, or their name, matches PATTERN as Go's path.Match (`*` and `?`
  never match `/`, `[a-z]` classes, `\\` escapes); only the matching references of an
  image are listed, images without any never;
- `label=KEY` / `label=KEY=VALUE` - the image config has that label (and value);
- `before=REF` / `since=REF` - created strictly before / after the image REF names.

Several values of one key: `reference` matches when any pattern does (OR), `label`
and `before`/`since` must all hold (AND, as docker's label match), `dangling` must
agree. Different keys must all hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

IMAGE_FILTER_KEYS = ("before", "dangling", "label", "reference", "since")
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


class FilterError(ValueError):
    """A --filter value lamina cannot use (the message is docker's where it has one)."""


@dataclass(frozen=True)
class ImageFilters:
    dangling: bool | None = None
    references: tuple[str, ...] = ()
    labels: tuple[tuple[str, str | None], ...] = ()
    before: tuple[str, ...] = ()
    since: tuple[str, ...] = ()

    def labels_match(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(k in labels and (v is None or labels[k] == v) for k, v in self.labels)

    def matching_tags(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        """The tags (familiar `name:tag`) the reference patterns select."""
        if not self.references:
            return tags
        return tuple(t for t in tags if any(reference_match(p, t) for p in self.references))

    def matching_references(self, repo_digests: list[str]) -> list[str]:
        """The repository digests (familiar `name@digest`) the reference patterns select."""
        if not self.references:
            return repo_digests
        return [d for d in repo_digests if any(reference_match(p, d) for p in self.references)]


def parse_image_filters(values: tuple[str, ...] | list[str]) -> ImageFilters:
    by_key: dict[str, list[str]] = {}
    for v in values:
        key, eq, value = v.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise FilterError(f"bad format of filter (expected name=value): {v!r}")
        if key not in IMAGE_FILTER_KEYS:
            raise FilterError(f"invalid filter '{key}' (expected one of {', '.join(IMAGE_FILTER_KEYS)})")
        by_key.setdefault(key, []).append(value)
    dangling = None
    for v in by_key.get("dangling", []):
        if v not in _BOOLS:
            raise FilterError(f"invalid filter 'dangling={v}' (expected true or false)")
        if dangling is not None and dangling != _BOOLS[v]:
            raise FilterError("conflicting values for filter 'dangling'")
        dangling = _BOOLS[v]
    for p in by_key.get("reference", []):
        _pattern(p)  # a malformed pattern fails here, before the store is read
    labels = []
    for v in by_key.get("label", []):
        k, eq, val = v.partition("=")
        labels.append((k, val if eq else None))
    return ImageFilters(dangling=dangling, references=tuple(by_key.get("reference", [])),
                        labels=tuple(labels), before=tuple(by_key.get("before", [])),
                        since=tuple(by_key.get("since", [])))


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern:
    """Go's path.Match pattern as a regular expression."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise FilterError(f"invalid reference pattern {pattern!r}: syntax error in pattern")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            parts = []
            first = True
            while True:
                if j >= n:
                    raise FilterError(f"invalid reference pattern {pattern!r}: syntax error in pattern")
                if pattern[j] == "]" and not first:
                    break
                first = False
                lo, j = _class_char(pattern, j)
                if j < n and pattern[j] == "-":
                    hi, j = _class_char(pattern, j + 1)
                    if hi < lo:
                        raise FilterError(f"invalid reference pattern {pattern!r}: syntax error in pattern")
                    parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
                else:
                    parts.append(re.escape(lo))
            out.append(("[^" if negate else "[") + "".join(parts) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.S)


def _class_char(pattern: str, j: int) -> tuple[str, int]:
    n = len(pattern)
    if j >= n or pattern[j] in "-]":
        raise FilterError(f"invalid reference pattern {pattern!r}: syntax error in pattern")
    if pattern[j] == "\\":
        j += 1
        if j >= n:
            raise FilterError(f"invalid reference pattern {pattern!r}: syntax error in pattern")
    return pattern[j], j + 1


def path_match(pattern: str, name: str) -> bool:
    """Go's path.Match(pattern, name) (whole-string match)."""
    return _pattern(pattern).fullmatch(name) is not None


def reference_match(pattern: str, familiar_tag: str) -> bool:
    """docker's reference.FamiliarMatch: the pattern against `name:tag` (or
    `name@digest`), then `name`."""
    if path_match(pattern, familiar_tag):
        return True
    if "@" in familiar_tag:
        name = familiar_tag.partition("@")[0]
    else:
        name = familiar_tag.rsplit(":", 1)[0] if ":" in familiar_tag.rsplit("/", 1)[-1] else familiar_tag
    return path_match(pattern, name)
