"""Compose files -> bake targets, as `docker buildx bake` reads them.

Every service with a `build:` section becomes a target named after the service
(`.` -> `_`), in the group `default`:

    build: DIR | {context, dockerfile, dockerfile_inline, args, target, labels,
                  cache_from, cache_to, secrets, ssh, platforms, tags, network,
                  pull, no_cache, ulimits, x-bake}
    image: NAME          -> the tag, when build.tags names none

`args` and `labels` take both the map and the list (`K=V`) forms; an arg given
without a value takes it from the service's `environment:` or the variables below,
and is dropped when neither has it (compose). Top-level `secrets:` with `file:` or
`environment:` feed `build.secrets`.

Variables: compose interpolation over every string value (`$VAR`, `${VAR}`,
`${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
`${VAR:+alt}`, `${VAR+alt}`, `$$` for a `$`), from the environment, then the
`.env` file next to the (first) compose file for names the environment lacks.
Relative contexts and secret files resolve from the compose file's directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from lamina.builder.bake.targets import Definition
from lamina.builder.errors import BuildError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TARGET_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")


def is_compose_name(path: Path) -> bool:
    return path.suffix.lower() in (".yml", ".yaml")


# -- interpolation ---------------------------------------------------------------------------

def interpolate(text: str, env: Mapping[str, str], where: str = "") -> str:
    """Compose's variable substitution in one string."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _brace_end(text, i + 2, where)
            out.append(_substitute(text[i + 2:end], env, where))
            i = end + 1
        else:
            m = _NAME.match(text, i + 1)
            if not m:
                raise BuildError(f"{where}invalid interpolation format in {text!r}: "
                                 "a `$` must be followed by a name, `{`, or `$`")
            out.append(env.get(m.group(), ""))
            i = m.end()
    return "".join(out)


def _brace_end(text: str, start: int, where: str) -> int:
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise BuildError(f"{where}invalid interpolation format in {text!r}: unclosed ${{")


def _substitute(body: str, env: Mapping[str, str], where: str) -> str:
    m = _NAME.match(body)
    if not m:
        raise BuildError(f"{where}invalid interpolation format: ${{{body}}}")
    name, rest = m.group(), body[m.end():]
    value = env.get(name)
    if rest == "":
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op):]
            break
    else:
        raise BuildError(f"{where}invalid interpolation format: ${{{body}}}")
    unset = value is None
    empty = unset or value == ""
    if op == ":-":
        return interpolate(arg, env, where) if empty else value
    if op == "-":
        return interpolate(arg, env, where) if unset else value
    if op == ":+":
        return "" if empty else interpolate(arg, env, where)
    if op == "+":
        return "" if unset else interpolate(arg, env, where)
    if (op == ":?" and empty) or (op == "?" and unset):
        message = interpolate(arg, env, where) or f"variable {name} is not set"
        raise BuildError(f"{where}required variable {name} is missing a value: {message}")
    return value


# a YAML alias is one shared node for the parser, but every later walk (interpolation,
# str() of a list) expands it: nine levels of ten aliases make 10^9 nodes from a few
# hundred bytes ("billion laughs"). compose-go's YAML decoder refuses such a file
# ("excessive aliasing"); so does lamina, once the expanded tree passes this many nodes.
MAX_NODES = 1_000_000


def interpolate_tree(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    budget = [MAX_NODES]

    def walk(value: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise BuildError(f"{where}the document expands to more than {MAX_NODES} values "
                             "(excessive YAML aliasing?)")
        if isinstance(value, str):
            return interpolate(value, env, where)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(value)


# -- .env ----------------------------------------------------------------------------------------

def read_dotenv(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """KEY=VALUE lines (`export ` allowed, `#` comments, '…' literal, "…" with escapes
    and interpolation, unquoted values interpolated, a ` #` starting a comment)."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(f"cannot read {path}: {e}") from None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not _NAME.fullmatch(key):
            raise BuildError(f"{path}:{number}: invalid variable name {key!r}")
        if not sep:
            if key in env:
                out[key] = env[key]
            continue
        value = value.strip()
        lookup = {**out, **env}
        if value.startswith("'") and value.rfind("'") > 0:
            value = value[1:value.rfind("'")]
        elif value.startswith('"') and value.rfind('"') > 0:
            inner = value[1:value.rfind('"')]
            inner = (inner.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
                     .replace("\\\\", "\\"))
            value = interpolate(inner, lookup, f"{path}:{number}: ")
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
            value = interpolate(value, lookup, f"{path}:{number}: ")
        out[key] = value
    return out


def compose_env(project_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, plus `.env` of the project directory for names it lacks."""
    env = dict(os.environ if environ is None else environ)
    for key, value in read_dotenv(project_dir / ".env", env).items():
        env.setdefault(key, value)
    return env


# -- services -> targets -------------------------------------------------------------------

def load_compose(files: list[Path], definition: Definition,
                 environ: Mapping[str, str] | None = None) -> None:
    """Read Compose files (merged in order) into `definition`."""
    import yaml

    project_dir = files[0].resolve().parent
    env = compose_env(project_dir, environ)
    services: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            raise BuildError(f"{path}{at}: not a valid YAML file: "
                             f"{getattr(e, 'problem', None) or e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BuildError(f"cannot read {path}: {e}") from None
        except ValueError as e:  # an integer of more than 4300 digits (int() refuses it)
            raise BuildError(f"{path}: not a valid YAML file: {e}") from None
        if data is None:
            raise BuildError(f"{path}: empty compose file")
        if not isinstance(data, dict):
            raise BuildError(f"{path}: a compose file is a mapping (services: ...)")
        data = interpolate_tree(data, env, f"{path}: ")
        found = data.get("services") or {}
        declared = data.get("secrets") or {}
        if not isinstance(found, dict) or not isinstance(declared, dict):
            raise BuildError(f"{path}: services and secrets must be mappings of names")
        for name, service in found.items():
            services[str(name)] = _merge_service(services.get(str(name)), service or {})
        secrets.update(declared)
    if not services:
        raise BuildError(f"{files[0]}: no services in the compose file")
    group: list[str] = []
    for name, service in services.items():
        if not isinstance(service, dict):
            raise BuildError(f"{files[0]}: service {name!r} must be a mapping")
        build = service.get("build")
        if build is None:
            continue
        target_name = name.replace(".", "_")
        if not _TARGET_NAME.match(target_name):
            raise BuildError(f"invalid service name {name!r}: a target name may only have "
                             "letters, digits, '_' and '-'")
        raw = _service_target(name, service, build, secrets, env, project_dir)
        definition.add_target(target_name, raw, project_dir)
        group.append(target_name)
    definition.add_group("default", group)


def _merge_service(old: Any, new: Any) -> Any:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge_service(out.get(key), value) if key == "build" else value
    return out


def _pairs(value: Any, what: str, service: str) -> dict[str, str | None]:
    """Compose's map-or-list form (`K: V` or `- K=V`, `- K`)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): (None if v is None else _text(v)) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for item in value:
            key, sep, val = str(item).partition("=")
            out[key] = val if sep else None
        return out
    raise BuildError(f"service {service!r}: {what} must be a map or a list")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise BuildError(f"expected a string or a list in the compose file, got {value!r}")
    return [str(v) for v in value]


def _ulimits(service: str, value: Any) -> list[str]:
    """Compose's `build.ulimits` (`nproc: 65535`, `nofile: {soft: 20000, hard: 40000}`)
    as `lamina build --ulimit` values (TYPE=SOFT[:HARD]), in the file's order."""
    if not isinstance(value, dict):
        raise BuildError(f"service {service!r}: build.ulimits must be a map of limits")
    out = []
    for kind, limit in value.items():
        if isinstance(limit, dict):
            if set(limit) != {"soft", "hard"}:
                raise BuildError(f"service {service!r}: build.ulimits.{kind} needs soft and "
                                 "hard (or a single number)")
            out.append(f"{kind}={_text(limit['soft'])}:{_text(limit['hard'])}")
        elif isinstance(limit, (int, str)) and not isinstance(limit, bool):
            out.append(f"{kind}={_text(limit)}")
        else:
            raise BuildError(f"service {service!r}: build.ulimits.{kind} must be a number "
                             "or {soft, hard}")
    return out


def _service_target(name: str, service: dict, build: Any, secrets: dict, env: Mapping[str, str],
                    project_dir: Path) -> dict[str, Any]:
    if isinstance(build, str):
        build = {"context": build}
    if not isinstance(build, dict):
        raise BuildError(f"service {name!r}: build must be a path or a mapping")
    raw: dict[str, Any] = {}
    if build.get("context"):
        raw["context"] = str(build["context"])
    if build.get("dockerfile"):
        raw["dockerfile"] = str(build["dockerfile"])
    if build.get("dockerfile_inline"):
        raw["dockerfile-inline"] = str(build["dockerfile_inline"])
    environment = _pairs(service.get("environment"), "environment", name)
    args = {}
    for key, value in _pairs(build.get("args"), "build.args", name).items():
        if value is None:
            value = environment.get(key) if environment.get(key) is not None else env.get(key)
        if value is not None:
            args[key] = value
    if args:
        raw["args"] = args
    labels = {k: (v if v is not None else "") for k, v in
              _pairs(build.get("labels"), "build.labels", name).items()}
    if labels:
        raw["labels"] = labels
    tags = _strings(build.get("tags"))
    if not tags and service.get("image"):
        tags = [str(service["image"])]
    if tags:
        raw["tags"] = tags
    if build.get("target"):
        raw["target"] = str(build["target"])
    if build.get("cache_from"):
        raw["cache-from"] = _strings(build["cache_from"])
    if build.get("cache_to"):
        raw["cache-to"] = _strings(build["cache_to"])
    if build.get("network"):
        raw["network"] = str(build["network"])
    if build.get("pull"):
        raw["pull"] = True
    if build.get("no_cache"):
        raw["no-cache"] = True
    if build.get("platforms"):
        raw["platforms"] = _strings(build["platforms"])
    if build.get("ulimits"):
        raw["ulimits"] = _ulimits(name, build["ulimits"])
    ssh = build.get("ssh")
    if ssh:
        entries = []
        for item in (ssh.items() if isinstance(ssh, dict) else
                     (str(s).partition("=")[::2] for s in _strings(ssh))):
            ident, path = item
            entries.append({"id": ident, **({"paths": [str(path)]} if path else {})})
        raw["ssh"] = sorted(entries, key=lambda e: e["id"])
    if build.get("secrets"):
        if not isinstance(build["secrets"], list):
            raise BuildError(f"service {name!r}: build.secrets must be a list")
        raw["secret"] = [_secret(name, s, secrets, project_dir) for s in build["secrets"]]
    for key in ("cache_from", "cache_to", "platforms", "tags"):
        if build.get(key) is not None and not isinstance(build[key], (list, str)):
            raise BuildError(f"service {name!r}: build.{key} must be a list")
    xbake = build.get("x-bake")
    if isinstance(xbake, dict):
        for key in ("tags", "platforms"):
            if xbake.get(key):
                raw[key] = list(dict.fromkeys(raw.get(key, []) + _split(xbake[key])))
        for key in ("cache-from", "cache-to", "output"):
            if xbake.get(key):
                raw[key] = raw.get(key, []) + _split(xbake[key])
        if xbake.get("secret"):
            raw["secret"] = raw.get("secret", []) + _split(xbake["secret"])
        for key in ("pull", "no-cache"):
            if xbake.get(key) is not None:
                raw[key] = bool(xbake[key])
    return raw


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return _strings(value)


def _secret(service: str, item: Any, secrets: dict, project_dir: Path) -> dict[str, str]:
    source = item.get("source") if isinstance(item, dict) else str(item)
    if not isinstance(source, str):
        raise BuildError(f"service {service!r}: a secret's source must be a name, got {source!r}")
    spec = secrets.get(source)
    if not isinstance(spec, dict):
        raise BuildError(f"service {service!r} refers to undefined secret {source}")
    if spec.get("external"):
        raise BuildError(f"service {service!r}: unsupported external secret {source}")
    entry = {"id": str(source)}
    if spec.get("file"):
        path = Path(os.path.expanduser(str(spec["file"])))
        entry["src"] = str(path if path.is_absolute() else project_dir / path)
    elif spec.get("environment"):
        entry["env"] = str(spec["environment"])
    else:
        raise BuildError(f"secret {source!r}: needs file: or environment:")
    return entry
