"""What a command loads and reads at start (issue 10: a no-op rebuild is a cold
Python process): `lamina build` imports only its own command module and no registry
client, `lamina --help` still lists every command, the grammar package loads its
parser on first use, and the stat cache reads its database in one query."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from lamina.builder.context.statcache import StatCache

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_ROOT"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO, env=env).stdout


def test_build_command_loads_only_its_module():
    out = _python(
        "import sys, json\n"
        "from lamina.builder.cli import main\n"
        "try:\n"
        "    main(['build', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert "lamina.builder.cli.build" in loaded
    for other in ("lamina.builder.cli.images", "lamina.builder.cli.registry",
                  "lamina.builder.cli.archive", "lamina.builder.cli.maintenance", "httpx"):
        assert other not in loaded, other


def test_help_lists_every_registered_command():
    # every command any module of the CLI package registers, imported by hand
    expected = json.loads(_python(
        "import importlib, pkgutil, json\n"
        "import lamina.builder.cli as pkg\n"
        "for m in pkgutil.iter_modules(pkg.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('lamina.builder.cli.' + m.name)\n"
        "print(json.dumps(sorted(pkg.cli.commands)))\n"))
    assert {"build", "images", "save", "pull", "gc", "version"} <= set(expected)
    help_text = subprocess.run([sys.executable, "-m", "lamina", "--help"], capture_output=True,
                               text=True, check=True, cwd=REPO).stdout
    listed = help_text.split("Commands:", 1)[1].split()
    assert all(name in listed for name in expected), (expected, help_text)


def test_grammar_parser_loads_on_first_use():
    out = _python(
        "import sys\n"
        "import lamina.grammar as g\n"
        "print('lark' in sys.modules)\n"
        "df = g.parse('FROM scratch\\nCOPY a /b\\n')\n"
        "print('lark' in sys.modules, df is not None)\n")
    first, second = out.strip().splitlines()
    assert (first, second) == ("False", "True True")


def test_stat_cache_reads_its_database_once(tmp_path):
    files = []
    for i in range(20):
        p = tmp_path / f"f{i}"
        p.write_text(f"content {i}\n")
        files.append(p)
    expected = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    with StatCache(tmp_path / "cache", racy_window_ns=0) as cache:
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                cache.digest_fd(fd)
            finally:
                os.close(fd)
    os.utime(tmp_path / "f3", ns=(1, 1))  # a changed stat: that file is read again
    with StatCache(tmp_path / "cache", racy_window_ns=0) as cache:
        queries = []
        cache._db.set_trace_callback(queries.append)
        again = []
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                again.append(cache.digest_fd(fd)[0])
            finally:
                os.close(fd)
        reads = [q for q in queries if q.lstrip().upper().startswith("SELECT")]
        assert len(reads) == 1, queries
        assert cache.files_hashed == 1
    assert again == expected
    # what changed was written back, the rest was not rewritten
    db = sqlite3.connect(tmp_path / "cache" / StatCache.DB_NAME)
    assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 20
