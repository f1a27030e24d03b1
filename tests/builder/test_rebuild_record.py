"""A rebuild that changes nothing takes the short path (builder.rebuild): same image
ID, same progress text as the full no-op, --iidfile written, and the build machinery
(the executor) never loaded. Every input it depends on sends it back to the full
build: a file of the context (even one no COPY reads), the Dockerfile, the base image
a tag names, a tag moved elsewhere, --no-cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builder.buildkit import build, lamina, make_base, make_context, python_env

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]

DOCKERFILE = """\
FROM bb
COPY src/ /src/
RUN ls /src > /listing
CMD ["cat", "/listing"]
"""


def _build_process(root: Path, ctx: Path, *args: str) -> tuple[dict, str]:
    """`lamina build` in a fresh process: (what it printed and loaded, its stderr)."""
    code = ("import json, sys, io, contextlib\n"
            "from lamina.builder.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    rc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'out': out.getvalue(),\n"
            "                  'executor': 'lamina.builder.executor' in sys.modules}))\n")
    r = subprocess.run([sys.executable, "-c", code, "--root", str(root), "build", "--progress",
                        "plain", *args, str(ctx)], capture_output=True, text=True, cwd=REPO,
                       env=python_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, r.stderr
    return result, r.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("rebuild")
    root = base / "store"
    make_base(root, base / "base-ctx")
    return root


def test_unchanged_rebuild_takes_the_short_path(root, tmp_path):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"src/a.txt": "a\n", "notes.md": "x\n"})
    first = build(root, ctx, "-t", "short:1").check()
    full, full_err = _build_process(root, ctx, "-t", "short:1")  # all hits: leaves the record
    assert full["executor"] and full["out"].strip() == first.image_id
    short, short_err = _build_process(root, ctx, "-t", "short:1", "--iidfile",
                                      str(tmp_path / "iid"))
    assert not short["executor"]
    assert short["out"].strip() == first.image_id
    assert (tmp_path / "iid").read_text() == first.image_id
    # the same progress as the full no-op (the iidfile does not show)
    assert short_err == full_err and "CACHED" in short_err

    # a context file no COPY reads: the full path (the provenance covers it), same image
    (ctx / "notes.md").write_text("changed\n")
    again, _ = _build_process(root, ctx, "-t", "short:1")
    assert again["executor"] and again["out"].strip() == first.image_id
    # a file the COPY reads: a new image
    _build_process(root, ctx, "-t", "short:1")
    (ctx / "src/a.txt").write_text("A\n")
    changed, _ = _build_process(root, ctx, "-t", "short:1")
    assert changed["executor"] and changed["out"].strip() != first.image_id


def test_moved_tag_and_other_base_take_the_full_path(root, tmp_path):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"src/a.txt": "a\n"})
    image = build(root, ctx, "-t", "short:2").check().image_id
    _build_process(root, ctx, "-t", "short:2")
    # the tag now names another image: the rebuild puts it back
    other = make_context(tmp_path / "other", "FROM bb\nRUN echo other > /o\n")
    build(root, other, "-t", "short:2").check()
    back, _ = _build_process(root, ctx, "-t", "short:2")
    assert back["executor"] and back["out"].strip() == image
    assert lamina(root, "inspect", "--format", "{{.Id}}", "short:2").stdout.strip() == image
    # the base tag names another image: a new image on top of it
    _build_process(root, ctx, "-t", "short:2")
    build(root, make_context(tmp_path / "base2", "FROM bb\nRUN echo base2 > /b\n"), "-t", "bb2").check()
    df = tmp_path / "Dockerfile.b"
    df.write_text(DOCKERFILE.replace("FROM bb", "FROM base:x"))
    assert lamina(root, "tag", "bb", "base:x").code == 0
    one, _ = _build_process(root, ctx, "-f", str(df), "-t", "short:3")
    _build_process(root, ctx, "-f", str(df), "-t", "short:3")
    assert lamina(root, "tag", "bb2", "base:x").code == 0
    two, _ = _build_process(root, ctx, "-f", str(df), "-t", "short:3")
    assert two["executor"] and two["out"].strip() != one["out"].strip()


def test_no_cache_never_takes_the_short_path(root, tmp_path):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"src/a.txt": "a\n"})
    build(root, ctx, "-t", "short:4").check()
    _build_process(root, ctx, "-t", "short:4")
    forced, err = _build_process(root, ctx, "-t", "short:4", "--no-cache")
    assert forced["executor"] and "CACHED" not in err
