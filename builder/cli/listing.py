"""docker's `--format` for listings and inspect output: the modes `table` (default),
`table TEMPLATE`, `json` and `TEMPLATE`, the header row of a table (the template run
on the column names), and Go's text/tabwriter alignment docker uses for tables
(minwidth 10, padding 3, spaces; the text after a line's last tab is not padded).

A template may write `\\t` and `\\n` as two characters (what a shell passes): they
become a tab and a newline, as docker does."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from lamina.builder.cli.gotemplate import Record, Template, TemplateError, compile_template

TAB_MINWIDTH = 10
TAB_PADDING = 3


def tabwrite(text: str, *, minwidth: int = TAB_MINWIDTH, padding: int = TAB_PADDING) -> str:
    """Go's tabwriter.NewWriter(w, minwidth, 1, padding, ' ', 0) over `text`: tab-
    terminated cells aligned in column blocks (consecutive lines that have the cell)."""
    lines = [line.split("\t") for line in text.split("\n")]
    trailing_newline = bool(lines) and lines[-1] == [""]
    if trailing_newline:
        lines.pop()
    out: list[str] = []

    def write_lines(widths: list[int], a: int, b: int) -> None:
        for cells in lines[a:b]:
            parts = []
            for j, c in enumerate(cells):
                parts.append(c.ljust(widths[j]) if j < len(widths) else c)
            out.append("".join(parts))

    def fmt(widths: list[int], line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(widths, line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            fmt(widths + [width], line0, this)
            line0 = this
        write_lines(widths, line0, line1)

    fmt([], 0, len(lines))
    return "\n".join(out) + ("\n" if trailing_newline else "")


class FormatError(Exception):
    """A `--format` that cannot be used (syntax, or a function the subset lacks)."""


def _template(source: str) -> Template:
    source = source.replace("\\t", "\t").replace("\\n", "\n")
    try:
        return compile_template(source)
    except TemplateError as e:
        raise FormatError(f"template parsing error: {e}") from None


def check_format(fmt: str | None) -> None:
    """Parse a --format now (FormatError), before any work is done."""
    if fmt and fmt not in ("table", "json"):
        _template(fmt[len("table"):].strip(" ") if fmt.startswith("table") else fmt)


def render_rows(fmt: str | None, rows: Iterable[Record], header: Mapping[str, str], default_table: str) -> str:
    """The text docker prints for `rows` under `--format fmt`: `None`/"table" is
    `default_table`, "json" one JSON object per row, "table T" a header row and tab-
    aligned rows, anything else the template once per row (each followed by a newline)."""
    fmt = "table" if fmt is None or fmt == "" else fmt
    if fmt == "table":
        fmt = default_table
    elif fmt == "json":
        fmt = "{{json .}}"
    table = fmt.startswith("table")
    tmpl = _template(fmt[len("table"):].strip(" ") if table else fmt)
    body = [tmpl.render(row) + "\n" for row in rows]
    if not table:
        return "".join(body)
    try:
        head = tmpl.render(dict(header), header=True)
    except TemplateError:
        head = ""
    return tabwrite(head + "\n" + "".join(body))


def render_objects(fmt: str | None, objects: list[Any], default) -> str:
    """inspect: without a template (or with "json") `default(objects)`; with one, the
    template once per object, each followed by a newline."""
    if fmt is None or fmt == "" or fmt == "json":
        return default(objects)
    tmpl = _template(fmt)
    return "".join(tmpl.render(o) + "\n" for o in objects)
