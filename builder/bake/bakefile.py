"""buildx bake files (docker-bake.hcl, docker-bake.json) -> bake targets and groups.

Both formats hold `variable`, `function`, `group` and `target` blocks; HCL is read
with python-hcl2 (structure only) and its expressions evaluated by
builder.bake.hclexpr; in JSON every string is an HCL template (`${VAR}`).

- `variable "NAME" { default = … }`: the environment's NAME overrides the default
  (converted to the default's type: bool, number); defaults may use other
  variables; top-level attributes (`NAME = …`) are variables too.
- `function "NAME" { params = [a, b]  variadic_params = rest  result = … }`.
- `target "NAME" { … inherits = [...] }` and `group "NAME" { targets = [...] }`.
- not supported, refused clearly: `matrix`, `name` (generated target names),
  template directives, `target.NAME.ATTR` references.

Relative contexts resolve from the current directory, as buildx does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from lamina.builder.bake.hclexpr import ExpressionError, Scope, evaluate_raw, unquote_key
from lamina.builder.bake.targets import KNOWN_FIELDS, Definition
from lamina.builder.errors import BuildError

_BLOCKS = ("variable", "function", "target", "group")


def parse_hcl(text: str, path: Path) -> dict[str, list[tuple[str, dict]]]:
    """python-hcl2's parse, regrouped: block kind -> [(label, raw body)]; top-level
    attributes under "attribute"."""
    import hcl2
    from hcl2.utils import SerializationOptions

    options = SerializationOptions(with_comments=False, explicit_blocks=False,
                                   preserve_heredocs=True, strip_string_quotes=False)
    try:
        data = hcl2.loads(text, serialization_options=options)
    except Exception as e:  # noqa: BLE001 - the parser raises lark's many error types
        raise BuildError(f"{path}: not a valid HCL bake file: {_first_line(e)}") from None
    out: dict[str, list[tuple[str, dict]]] = {kind: [] for kind in _BLOCKS}
    out["attribute"] = []
    for key, value in data.items():
        if key.startswith("__"):
            continue
        if key in _BLOCKS and isinstance(value, list):
            for block in value:
                for label, body in block.items():
                    if label.startswith("__"):
                        continue
                    out[key].append((unquote_key(label), body))
        elif key in _BLOCKS:
            raise BuildError(f"{path}: a {key} block needs a name label ({key} \"NAME\" {{ … }})")
        else:
            out["attribute"].append((key, {"default": value}))
    return out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def parse_json(text: str, path: Path) -> dict[str, list[tuple[str, dict]]]:
    """The JSON form: {"variable": {NAME: {...}}, "target": {NAME: {...}}, ...};
    strings become quoted HCL templates so both forms evaluate alike."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except ValueError as e:  # a number of more than 4300 digits (int() refuses it)
        raise BuildError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: a bake file in JSON is an object")
    out: dict[str, list[tuple[str, dict]]] = {kind: [] for kind in _BLOCKS}
    out["attribute"] = []
    for key, value in data.items():
        if key in _BLOCKS:
            if not isinstance(value, dict):
                raise BuildError(f"{path}: {key!r} must map names to definitions")
            for name, body in value.items():
                if not isinstance(body, dict):
                    raise BuildError(f"{path}: {key} {name!r} must be an object")
                if key == "function":  # result/params hold expressions as strings
                    out[key].append((name, {k: (v if k != "result" else _as_template(v))
                                            for k, v in body.items()}))
                else:
                    out[key].append((name, _as_template(body)))
        else:
            out["attribute"].append((key, {"default": _as_template(value)}))
    return out


def _as_template(value: Any) -> Any:
    """JSON strings -> quoted raw strings (templates), the shape python-hcl2 gives."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return [_as_template(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_template(v) for k, v in value.items()}
    return value


class Variables:
    """The variables and functions of all bake files, evaluated on demand."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.raw: dict[str, dict] = {}
        self.functions: dict[str, dict] = {}
        self.values: dict[str, Any] = {}
        self.evaluating: list[str] = []

    def add(self, blocks: dict[str, list[tuple[str, dict]]], path: Path) -> None:
        for name, body in blocks["variable"] + blocks["attribute"]:
            self.raw[name] = dict(body, __file__=str(path))
        for name, body in blocks["function"]:
            self.functions[name] = dict(body, __file__=str(path))

    def scope(self, local: Mapping[str, Any] | None = None) -> Scope:
        def lookup(name: str) -> Any:
            if local is not None and name in local:
                return local[name]
            return self.value(name)

        return Scope(lookup=lookup, call=self.call)

    def value(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name not in self.raw:
            if name in ("target", "group"):
                raise ExpressionError(f"references to {name}.NAME.ATTR are not supported")
            raise ExpressionError(f"unknown variable {name!r}")
        if name in self.evaluating:
            raise ExpressionError(f"variable {name!r} refers to itself "
                                  f"({' -> '.join(self.evaluating + [name])})")
        self.evaluating.append(name)
        try:
            body = self.raw[name]
            default = evaluate_raw(body.get("default"), self.scope()) if "default" in body else ""
            if name in self.environ:
                default = _typed(self.environ[name], default, name)
            self.values[name] = default
            return default
        finally:
            self.evaluating.pop()

    def call(self, name: str, args: list) -> Any:
        fn = self.functions.get(name)
        if fn is None:
            raise ExpressionError(f"unknown function {name}()")
        params = [unquote_key(str(p)) for p in fn.get("params") or []]
        variadic = fn.get("variadic_params")
        if len(args) < len(params) or (len(args) > len(params) and not variadic):
            raise ExpressionError(f"{name}() takes {len(params)} argument(s), got {len(args)}")
        local = dict(zip(params, args))
        if variadic:
            local[unquote_key(str(variadic))] = list(args[len(params):])
        return evaluate_raw(fn.get("result"), self.scope(local))


def _typed(text: str, default: Any, name: str) -> Any:
    """An environment value for a variable whose default has a type (buildx)."""
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("1", "t", "true"):
            return True
        if low in ("0", "f", "false"):
            return False
        raise BuildError(f"variable {name}: {text!r} from the environment is not a bool")
    if isinstance(default, (int, float)):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                raise BuildError(f"variable {name}: {text!r} from the environment is not a "
                                 "number") from None
    return text


def load_bakefiles(files: list[Path], definition: Definition,
                   environ: Mapping[str, str] | None = None) -> None:
    """Read HCL/JSON bake files (merged in order) into `definition`."""
    env = dict(os.environ if environ is None else environ)
    parsed = []
    variables = Variables(env)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BuildError(f"cannot read {path}: {e}") from None
        blocks = parse_json(text, path) if path.suffix.lower() == ".json" else parse_hcl(text, path)
        variables.add(blocks, path)
        parsed.append((path, blocks))
    cwd = Path.cwd()
    for path, blocks in parsed:
        for name, body in blocks["group"]:
            group = _evaluate_body(body, variables, path, f"group {name!r}")
            targets = group.get("targets") or []
            if not isinstance(targets, list):
                raise BuildError(f"{path}: group {name!r}: targets must be a list")
            definition.add_group(name, targets, group.get("description"))
        for name, body in blocks["target"]:
            for refused in ("matrix", "name"):
                if refused in body:
                    raise BuildError(f"{path}: target {name!r}: {refused!r} is not supported by "
                                     "lamina bake")
            raw = _evaluate_body(body, variables, path, f"target {name!r}")
            unknown = set(raw) - KNOWN_FIELDS
            if unknown:
                raise BuildError(f"{path}: target {name!r}: unknown attribute(s) "
                                 f"{', '.join(sorted(unknown))}")
            if isinstance(raw.get("inherits"), str):
                raw["inherits"] = [raw["inherits"]]
            definition.add_target(name, raw, cwd)


def _evaluate_body(body: dict, variables: Variables, path: Path, what: str) -> dict[str, Any]:
    out = {}
    for key, value in body.items():
        if key.startswith("__"):
            continue
        try:
            out[unquote_key(key)] = evaluate_raw(value, variables.scope())
        except ExpressionError as e:
            raise BuildError(f"{path}: {what}, attribute {unquote_key(key)!r}: {e}") from None
    return out

