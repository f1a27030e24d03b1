"""Explaining how two images differ (`lamina diff`, and `lamina verify` after a rebuild).

    compare(a, b, semantic=False) -> Report      # a, b: store.imagesource.ImageSource
    render_text(report) -> str                   # what a person reads
    render_json(report) -> str                   # what a machine reads (report.to_dict())

What is compared, in the order a Report lists it:
- manifest: every field, each layer descriptor (media type, digest, size,
  annotations); a docker-archive has no manifest, which is said, not compared;
- config: every field (dotted paths: `config.Env`, `config.Labels.k`) but history
  and rootfs;
- history: entry by entry, field by field;
- layers: their count and, position by position, their diff_ids;
- files: when both images have as many layers, layer i of A against layer i of B
  (only the pairs whose diff_ids differ: an equal diff_id is equal content), else the
  two final filesystems (layers applied with their whiteouts). Per file: added,
  removed, or changed in type, mode, owner, size and content digest (a unified diff
  for small UTF-8 text files), link target, device numbers, mtime, xattrs; a
  whiteout is a file like the others (`.wh.name`) and says what it removes. Entries
  in another tar order are reported per layer.

`semantic=True` drops what cannot change how a container behaves: timestamps (config
`created`, history times, file mtimes), layer digests, sizes and media types (the
compression), diff_ids, the number of layers and which layer holds a file (files are
compared on the final filesystems), tar entry order, and the history (which follows
the layer boundaries; its commands are what made the files, which are compared).

The text report is written to terminals: whatever in it an image chose (file names,
history commands, the lines of a text diff, config values) shows its control
characters in lamina's caret form (ESC as ^[, a newline inside a name as ^J:
builder.steplog.controls_shown), never as the bytes that would drive the terminal.

Layers are streamed twice at most (records, then the bytes of the few small text
files whose content differs); nothing is held whole in memory but file records.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from lamina.builder.steplog import controls_shown
from lamina.store.imagesource import ImageSource
from lamina.store.layerfiles import FileRecord, MergedFile, layer_files, merge_layers, read_files

TEXT_LIMIT = 64 << 10       # larger files get sizes and digests, no text diff
DIFF_LINE_LIMIT = 200       # lines of one file's unified diff shown

_SEMANTIC_CONFIG_IGNORED = {"created"}
_SEMANTIC_DESCRIPTOR_IGNORED = {"digest", "size", "mediaType"}


@dataclass(frozen=True)
class Change:
    """One differing value: where it is (`config.Env`, `layers[2].diff_id`, `mode`),
    A's value and B's (None: absent on that side)."""

    field: str
    a: Any
    b: Any


@dataclass(frozen=True)
class FileDiff:
    """A file that differs. `status` is added (only in B), removed (only in A) or
    changed; `layer_a`/`layer_b` are the indexes (0 = base) of the layers holding it and
    `step_a`/`step_b` the history `created_by` of those layers (the step that wrote it)."""

    path: str
    status: str
    layer_a: int | None = None
    layer_b: int | None = None
    step_a: str | None = None
    step_b: str | None = None
    changes: tuple[Change, ...] = ()
    text_diff: tuple[str, ...] = ()
    whiteout: str | None = None  # the path a whiteout entry removes


@dataclass(frozen=True)
class ImageInfo:
    name: str
    kind: str
    manifest_digest: str | None
    config_digest: str
    layers: int


@dataclass(frozen=True)
class Report:
    a: ImageInfo
    b: ImageInfo
    semantic: bool
    manifest: tuple[Change, ...] = ()
    config: tuple[Change, ...] = ()
    history: tuple[Change, ...] = ()
    layers: tuple[Change, ...] = ()
    files: tuple[FileDiff, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def equal(self) -> bool:
        return not (self.manifest or self.config or self.history or self.layers or self.files)

    @property
    def same_image_id(self) -> bool:
        return self.a.config_digest == self.b.config_digest

    def count(self) -> int:
        return (len(self.manifest) + len(self.config) + len(self.history) + len(self.layers)
                + len(self.files))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["equal"] = self.equal
        d["same_image_id"] = self.same_image_id
        return d


# -- documents -------------------------------------------------------------------------

def diff_values(prefix: str, a: Any, b: Any, ignored: Iterable[str] = ()) -> list[Change]:
    """Changes between two JSON values: dicts key by key (dotted paths), anything else
    as a whole. Keys in `ignored` (top level of this call) are skipped."""
    skip = set(ignored)
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[Change] = []
        for key in sorted(set(a) | set(b)):
            if key in skip:
                continue
            where = f"{prefix}.{key}" if prefix else key
            if key not in a:
                out.append(Change(where, None, b[key]))
            elif key not in b:
                out.append(Change(where, a[key], None))
            else:
                out += diff_values(where, a[key], b[key])
        return out
    return [] if a == b else [Change(prefix, a, b)]


def _diff_manifest(ma: dict | None, mb: dict | None, semantic: bool) -> tuple[list[Change], list[str]]:
    if ma is None or mb is None:
        if ma is None and mb is None:
            return [], ["neither image has a manifest (docker-archive): manifests not compared"]
        which = "A" if ma is None else "B"
        return [], [f"{which} has no manifest (docker-archive): manifests not compared"]
    out = diff_values("", ma, mb, ignored=("config", "layers"))
    desc_ignored = _SEMANTIC_DESCRIPTOR_IGNORED if semantic else set()
    out += diff_values("config", ma.get("config") or {}, mb.get("config") or {},
                       ignored=desc_ignored)
    la, lb = ma.get("layers") or [], mb.get("layers") or []
    if not semantic or len(la) == len(lb):
        for i in range(min(len(la), len(lb))):
            out += diff_values(f"layers[{i}]", la[i], lb[i], ignored=desc_ignored)
    if semantic:
        out = [c for c in out if not c.field.startswith("annotations.") or
               not c.field.endswith(".created")]
    return out, []


def _diff_history(ha: list, hb: list, semantic: bool) -> list[Change]:
    ignored: set[str] = set()
    out: list[Change] = []
    for i in range(max(len(ha), len(hb))):
        a = ha[i] if i < len(ha) else None
        b = hb[i] if i < len(hb) else None
        if a is None or b is None:
            out.append(Change(f"history[{i}]", a, b))
        elif isinstance(a, dict) and isinstance(b, dict):
            out += diff_values(f"history[{i}]", a, b, ignored=ignored)
        elif a != b:
            out.append(Change(f"history[{i}]", a, b))
    return out


def _steps(config: dict, layers: int) -> list[str | None]:
    """The history `created_by` of each layer (None where the history does not say)."""
    made = [h.get("created_by") for h in config.get("history") or ()
            if isinstance(h, dict) and not h.get("empty_layer")]
    return made if len(made) == layers else [None] * layers


# -- files -----------------------------------------------------------------------------

def _fmt_mode(mode: int) -> str:
    return f"{mode:04o}"


def diff_records(a: FileRecord, b: FileRecord, semantic: bool) -> list[Change]:
    """How one file differs between two records of the same path."""
    out: list[Change] = []
    if a.type != b.type:
        out.append(Change("type", a.type, b.type))
    if a.mode != b.mode:
        out.append(Change("mode", _fmt_mode(a.mode), _fmt_mode(b.mode)))
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append(Change("owner", f"{a.uid}:{a.gid}", f"{b.uid}:{b.gid}"))
    if a.type == b.type and a.digest != b.digest:
        if a.size != b.size:
            out.append(Change("size", a.size, b.size))
        out.append(Change("content", a.digest, b.digest))
    if a.linkname != b.linkname:
        out.append(Change("link target", a.linkname, b.linkname))
    if (a.devmajor, a.devminor) != (b.devmajor, b.devminor):
        out.append(Change("device", f"{a.devmajor},{a.devminor}", f"{b.devmajor},{b.devminor}"))
    if a.mtime != b.mtime and not semantic:
        out.append(Change("mtime", a.mtime, b.mtime))
    xa, xb = dict(a.xattrs), dict(b.xattrs)
    for name in sorted(set(xa) | set(xb)):
        if xa.get(name) != xb.get(name):
            out.append(Change(f"xattr {name}", xa.get(name), xb.get(name)))
    return out


def _file_diffs(ra: dict[str, tuple[FileRecord, int]], rb: dict[str, tuple[FileRecord, int]],
                steps_a: list, steps_b: list, semantic: bool) -> list[FileDiff]:
    out: list[FileDiff] = []
    for path in sorted(set(ra) | set(rb)):
        a, b = ra.get(path), rb.get(path)
        la = a[1] if a else None
        lb = b[1] if b else None
        sa = steps_a[la] if la is not None else None
        sb = steps_b[lb] if lb is not None else None
        rec = (a or b)[0]  # type: ignore[index]
        whiteout = rec.whiteout if rec.whiteout is not None else None
        if a is None or b is None:
            out.append(FileDiff(path, "added" if a is None else "removed", la, lb, sa, sb,
                                whiteout=whiteout))
            continue
        changes = diff_records(a[0], b[0], semantic)
        if changes:
            out.append(FileDiff(path, "changed", la, lb, sa, sb, tuple(changes), whiteout=whiteout))
    return out


def _order_change(index: int, a: list[FileRecord], b: list[FileRecord]) -> Change | None:
    common = {r.path for r in a} & {r.path for r in b}
    oa = [r.path for r in a if r.path in common]
    ob = [r.path for r in b if r.path in common]
    if oa == ob:
        return None
    first = next(i for i, (x, y) in enumerate(zip(oa, ob)) if x != y)
    return Change(f"layers[{index}].order", oa[first], ob[first])


def _is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _add_text_diffs(a: ImageSource, b: ImageSource, diffs: list[FileDiff]) -> list[FileDiff]:
    """Unified diffs for changed small text files (a second pass over their layers)."""
    wanted_a: dict[int, set[str]] = {}
    wanted_b: dict[int, set[str]] = {}
    chosen = []
    for d in diffs:
        fields = {c.field: c for c in d.changes}
        if d.status != "changed" or "content" not in fields or "type" in fields:
            continue
        size = fields.get("size")
        if size is not None and max(size.a, size.b) > TEXT_LIMIT:
            continue
        if d.layer_a is None or d.layer_b is None:
            continue
        chosen.append(d)
        wanted_a.setdefault(d.layer_a, set()).add(d.path)
        wanted_b.setdefault(d.layer_b, set()).add(d.path)
    if not chosen:
        return diffs
    data_a = _read_wanted(a, wanted_a)
    data_b = _read_wanted(b, wanted_b)
    out = []
    for d in diffs:
        if d in chosen:
            ta, tb = data_a.get((d.layer_a, d.path)), data_b.get((d.layer_b, d.path))
            if ta is not None and tb is not None and _is_text(ta) and _is_text(tb):
                lines = list(difflib.unified_diff(
                    ta.decode().splitlines(), tb.decode().splitlines(),
                    fromfile=f"a/{d.path}", tofile=f"b/{d.path}", lineterm=""))
                if len(lines) > DIFF_LINE_LIMIT:
                    lines = lines[:DIFF_LINE_LIMIT] + [
                        f"... {len(lines) - DIFF_LINE_LIMIT} more lines"]
                d = FileDiff(d.path, d.status, d.layer_a, d.layer_b, d.step_a, d.step_b,
                             d.changes, tuple(lines), d.whiteout)
        out.append(d)
    return out


def _read_wanted(src: ImageSource, wanted: dict[int, set[str]]) -> dict[tuple[int, str], bytes]:
    out = {}
    for index, paths in wanted.items():
        with _closing(src.open_layer(index)) as stream:
            for path, data in read_files(stream, paths, TEXT_LIMIT).items():
                out[(index, path)] = data
    return out


class _closing:
    def __init__(self, stream) -> None:
        self.stream = stream

    def __enter__(self):
        return self.stream

    def __exit__(self, *exc) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


def _records(src: ImageSource, index: int) -> list[FileRecord]:
    with _closing(src.open_layer(index)) as stream:
        return list(layer_files(stream))


# -- the comparison --------------------------------------------------------------------

def _info(src: ImageSource) -> ImageInfo:
    d = src.documents
    return ImageInfo(d.name, d.kind, d.manifest_digest, d.config_digest, len(d.layers))


def compare(a: ImageSource, b: ImageSource, *, semantic: bool = False) -> Report:
    """Every difference between images `a` and `b` (see the module docstring)."""
    da, db = a.documents, b.documents
    ca, cb = da.config_json(), db.config_json()
    notes: list[str] = []
    manifest, more = _diff_manifest(da.manifest_json(), db.manifest_json(), semantic)
    notes += more
    config = diff_values("", ca, cb, ignored={"history", "rootfs"} |
                         (_SEMANTIC_CONFIG_IGNORED if semantic else set()))
    history = [] if semantic else _diff_history(list(ca.get("history") or ()),
                                                list(cb.get("history") or ()), semantic)
    ids_a = [l.diff_id for l in da.layers]
    ids_b = [l.diff_id for l in db.layers]
    layers: list[Change] = []
    if not semantic:
        if len(ids_a) != len(ids_b):
            layers.append(Change("layers.count", len(ids_a), len(ids_b)))
        for i in range(min(len(ids_a), len(ids_b))):
            if ids_a[i] != ids_b[i]:
                layers.append(Change(f"layers[{i}].diff_id", ids_a[i], ids_b[i]))
    steps_a, steps_b = _steps(ca, len(ids_a)), _steps(cb, len(ids_b))
    files: list[FileDiff] = []
    if ids_a != ids_b:
        if not semantic and len(ids_a) == len(ids_b):
            for i in range(len(ids_a)):
                if ids_a[i] == ids_b[i]:
                    continue
                ra, rb = _records(a, i), _records(b, i)
                order = _order_change(i, ra, rb)
                if order is not None:
                    layers.append(order)
                files += _file_diffs({r.path: (r, i) for r in ra}, {r.path: (r, i) for r in rb},
                                     steps_a, steps_b, semantic)
        else:
            fa = merge_layers(_records(a, i) for i in range(len(ids_a)))
            fb = merge_layers(_records(b, i) for i in range(len(ids_b)))
            files = _file_diffs(_flat(fa), _flat(fb), steps_a, steps_b, semantic)
            if not semantic and len(ids_a) != len(ids_b) and not files:
                notes.append("the layers hold the same final filesystem: only the layer "
                             "boundaries differ")
        files = _add_text_diffs(a, b, files)
    if da.config_digest == db.config_digest and da.manifest_digest != db.manifest_digest \
            and da.manifest is not None and db.manifest is not None:
        notes.append("same image ID (config digest): the manifests differ only in the layer "
                     "blobs' encoding (compression), not in content")
    return Report(a=_info(a), b=_info(b), semantic=semantic, manifest=tuple(manifest),
                  config=tuple(config), history=tuple(history), layers=tuple(layers),
                  files=tuple(files), notes=tuple(notes))


def _flat(files: dict[str, MergedFile]) -> dict[str, tuple[FileRecord, int]]:
    return {p: (m.record, m.layer) for p, m in files.items()}


# -- rendering -------------------------------------------------------------------------

def _show(value: Any, field_name: str = "") -> str:
    if value is None:
        return "(none)"
    if field_name == "mtime" and isinstance(value, int):
        return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _where(layer: int | None, step: str | None) -> str:
    if layer is None:
        return ""
    return f"layer {layer}" + (f": {step}" if step else "")


def render_text(report: Report) -> str:
    """The report as lines a person reads (ends with a newline)."""
    lines: list[str] = []
    for mark, side in (("A", report.a), ("B", report.b)):
        lines.append(f"{mark}: {side.name} ({side.kind}) image ID {side.config_digest}"
                     + (f" manifest {side.manifest_digest}" if side.manifest_digest else ""))
    for title, changes in (("manifest", report.manifest), ("config", report.config),
                           ("history", report.history), ("layers", report.layers)):
        if changes:
            lines.append(f"{title}:")
            for c in changes:
                lines.append(f"  {c.field}: {_show(c.a)} -> {_show(c.b)}")
    if report.files:
        lines.append("files:")
        for f in report.files:
            what = f" (whiteout of /{f.whiteout})" if f.whiteout is not None else ""
            if f.status == "added":
                lines.append(f"  + /{f.path}{what}  [B {_where(f.layer_b, f.step_b)}]")
            elif f.status == "removed":
                lines.append(f"  - /{f.path}{what}  [A {_where(f.layer_a, f.step_a)}]")
            else:
                where = _where(f.layer_b, f.step_b)
                if (f.layer_a, f.step_a) != (f.layer_b, f.step_b):
                    where = f"A {_where(f.layer_a, f.step_a)}; B {where}"
                lines.append(f"  ~ /{f.path}{what}  [{where}]")
                for c in f.changes:
                    lines.append(f"      {c.field}: {_show(c.a, c.field)} -> {_show(c.b, c.field)}")
                for t in f.text_diff:
                    lines.append(f"      {t}")
    for n in report.notes:
        lines.append(f"note: {n}")
    mode = " (semantic)" if report.semantic else ""
    if report.equal:
        lines.append(f"identical{mode}")
    else:
        lines.append(f"{report.count()} difference{'s' if report.count() != 1 else ''}{mode}")
    # one report line each: a newline an image put in a name or a value is shown too
    return "\n".join(controls_shown(line).replace("\n", "^J") for line in lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


__all__ = ["Change", "FileDiff", "ImageInfo", "Report", "compare", "diff_records", "diff_values",
           "render_json", "render_text", "TEXT_LIMIT"]
