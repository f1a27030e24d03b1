"""`COPY --chmod` / `ADD --chmod` values: octal (`0755`, `644`) or symbolic (`u+x,g-w`,
`a=rX`, `go=u-w`), parsed once and applied to each copied file and directory.

Semantics (BuildKit's dockerfile frontend, which accepts symbolic modes since
Dockerfile 1.14 through a port of BSD setmode(3), i.e. chmod(1)):
- octal: digits only, at most 07777, replaces all 12 permission bits (setuid,
  setgid, sticky included). Anything else that starts with a digit is BuildKit's
  error "invalid chmod parameter: '<v>'. it should be octal string and between 0
  and 07777".
- symbolic: comma-separated clauses `[ugoa]*([-+=]([rwxXst]*|[ugo]))+`, applied
  left to right to the source's mode. `X` (with `+`) adds execute when the entry is
  a directory or already had an execute bit (checked on the mode before the
  change, as BSD does). `s` means setuid for `u` and setgid for `g`; `t` is the
  sticky bit. A clause without `ugoa` is filtered through the umask, as chmod(1)
  does: the builder's process umask in BuildKit; here a fixed 022 (buildkitd's
  usual one), so `+w` gives `u+w` and the result never depends on our umask.
Applies to directories too (BuildKit applies --chmod to every copied entry), not to
symlinks, and not to the directories created for missing destination parents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lamina.builder.errors import BuildError

__all__ = ["ChmodSpec", "parse_chmod", "UMASK"]

UMASK = 0o022

_U, _G, _O = 0o4700, 0o2070, 0o0007
_WHO = {"u": _U, "g": _G, "o": _O, "a": _U | _G | _O}
_CLASS_SHIFT = {"u": 6, "g": 3, "o": 0}
_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")


@dataclass(frozen=True)
class _Action:
    op: str          # "+", "-", "="
    perms: str       # letters from rwxXst, or "" ...
    copy_from: str   # ... or one of u/g/o (copy that class's bits)


@dataclass(frozen=True)
class _Clause:
    who: str         # letters from ugoa; "" = all, filtered by the umask
    actions: tuple[_Action, ...]


@dataclass(frozen=True)
class ChmodSpec:
    """A parsed --chmod value; `apply(mode, is_dir)` gives the new permission bits."""

    text: str
    octal: int | None = None
    clauses: tuple[_Clause, ...] = ()

    def apply(self, mode: int, is_dir: bool = False) -> int:
        if self.octal is not None:
            return self.octal
        orig = mode & 0o7777
        new = orig
        for clause in self.clauses:
            new = _apply_clause(clause, new, orig, is_dir)
        return new

    def __str__(self) -> str:
        return self.text


def _who_mask(who: str) -> tuple[int, int]:
    """(bits a clause may touch, mask applied to the bits it sets)."""
    if not who:
        return 0o7777, 0o7777 & ~UMASK
    mask = 0
    for c in who:
        mask |= _WHO[c]
    return mask, 0o7777


def _apply_clause(clause: _Clause, new: int, orig: int, is_dir: bool) -> int:
    affect, umask_filter = _who_mask(clause.who)
    only_other = clause.who != "" and set(clause.who) <= {"o"}
    for a in clause.actions:
        if a.copy_from:
            value = (new >> _CLASS_SHIFT[a.copy_from]) & 0o7
            bits = 0
            classes = [c for c in "ugo" if not clause.who or c in clause.who or "a" in clause.who]
            for c in classes:
                bits |= value << _CLASS_SHIFT[c]
            bits &= umask_filter
            if a.op == "=":
                clear = 0
                for c in classes:
                    clear |= 0o7 << _CLASS_SHIFT[c]
                new &= ~clear
                new |= bits
            elif a.op == "+":
                new |= bits
            else:
                new &= ~bits
            continue
        perm = 0
        sticky = False
        for p in a.perms:
            if p == "r":
                perm |= 0o444
            elif p == "w":
                perm |= 0o222
            elif p == "x":
                perm |= 0o111
            elif p == "X":
                if a.op == "+" and (is_dir or orig & 0o111):
                    perm |= 0o111
            elif p == "s":
                if not only_other:
                    perm |= 0o6000
            elif p == "t":
                if not only_other:
                    sticky = True
        touch = affect | (0o1000 if sticky else 0)
        bits = perm & touch & umask_filter
        if sticky:
            bits |= 0o1000
        if a.op == "=":
            # '=' clears what the clause names (all but sticky without who), then sets
            new &= ~(touch if clause.who else 0o6777 | (0o1000 if sticky else 0))
            new |= bits
        elif a.op == "+":
            new |= bits
        else:
            new &= ~bits
    return new & 0o7777


def parse_chmod(value: "str | int | ChmodSpec | None") -> ChmodSpec | None:
    """Parse a --chmod value (None/"" -> None). BuildError when invalid."""
    if value is None or isinstance(value, ChmodSpec):
        return value
    if isinstance(value, int):
        if not 0 <= value <= 0o7777:
            raise BuildError(f"invalid chmod parameter: '{value:o}'. it should be octal string "
                             "and between 0 and 07777")
        return ChmodSpec(text=f"{value:o}", octal=value)
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit():
        if not re.fullmatch(r"[0-7]+", text) or int(text, 8) > 0o7777:
            raise BuildError(f"invalid chmod parameter: '{text}'. it should be octal string "
                             "and between 0 and 07777")
        return ChmodSpec(text=text, octal=int(text, 8))
    clauses = []
    for part in text.split(","):
        m = _CLAUSE.fullmatch(part)
        if m is None:
            raise BuildError(f"invalid chmod parameter: '{text}': invalid syntax "
                             "(expected octal like 0755 or symbolic like u+x,g-w)")
        actions = tuple(_Action(op, "" if p in ("u", "g", "o") else p,
                                p if p in ("u", "g", "o") else "")
                        for op, p in _ACTION.findall(m.group(2)))
        clauses.append(_Clause(who=m.group(1), actions=actions))
    return ChmodSpec(text=text, clauses=tuple(clauses))
