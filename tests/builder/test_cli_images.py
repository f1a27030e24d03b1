"""The store commands of the `lamina` CLI: import, images, inspect, history, tag,
rmi, gc, prune, fsck, du — output shaped like docker's, errors as one line."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from lamina.builder.cli import main
from lamina.builder.cli.units import human_duration, human_size, parse_duration, parse_size
from lamina.store.errors import StoreError
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]


def run(capsys, root: Path, *args: str) -> tuple[int, str, str]:
    rc = main(["--root", str(root), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def sub(root: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory, busybox_path) -> Path:
    d = tmp_path_factory.mktemp("bb")
    root = d / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "bin" / "busybox").write_bytes(Path(busybox_path).read_bytes())
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in ("sh", "ls", "cat"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "motd").write_text("hi\n")
    tar = d / "bb.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    return tar


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "store"


def layer_tar(root: Path, digest: str) -> bytes:
    blob = (root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    return subprocess.run(["zstd", "-dcq"], input=blob, capture_output=True, check=True).stdout


def test_import_images_inspect_history(capsys, root, busybox_tar, monkeypatch):
    require_tool("zstd")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    rc, out, err = run(capsys, root, "import", str(busybox_tar), "bb:1")
    assert rc == 0, err
    image_id = out.strip()
    config_blob = root / "blobs" / "sha256" / image_id.split(":")[1]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    assert "sha256:" + hashlib.sha256(config_blob.read_bytes()).hexdigest() == image_id

    # inspect: a list with one object, docker's field names
    rc, out, _ = run(capsys, root, "inspect", "bb:1")
    (info,) = json.loads(out)
    assert info["Id"] == image_id and info["RepoTags"] == ["bb:1"]
    assert info["Created"] == "1970-01-01T00:00:00Z"
    assert info["Os"] == "linux"
    assert info["Architecture"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(),
                                                                                 info["Architecture"])
    manifest = json.loads((root / "blobs" / "sha256" / info["Descriptor"]["digest"].split(":")[1]).read_bytes())
    tar = layer_tar(root, manifest["layers"][0]["digest"])
    assert info["RootFS"] == {"Type": "layers", "Layers": ["sha256:" + hashlib.sha256(tar).hexdigest()]}
    assert info["Size"] == len(tar)
    assert info["Comment"] == "Imported from bb.tar"

    # images: docker's columns; SIZE in decimal units, 3 significant digits
    rc, out, _ = run(capsys, root, "images")
    header, row = out.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert row.startswith("bb ") and row.split()[1:3] == ["1", image_id[7:19]]
    years = int(timedelta(seconds=__import__("time").time()).total_seconds() / 3600 / 24 / 365)
    assert f"{years} years ago" in row
    assert row.split()[-1] == f"{len(tar) / 1e6:.3g}MB"
    rc, out, _ = run(capsys, root, "images", "-q")
    assert out.split() == [image_id[7:19]]
    rc, out, _ = run(capsys, root, "images", "--format", "json")
    (obj,) = [json.loads(l) for l in out.splitlines()]
    assert (obj["Repository"], obj["Tag"], obj["ID"]) == ("bb", "1", image_id[7:19])
    assert obj["Digest"] == "<none>"  # docker: no RepoDigests (never pushed or pulled)

    # history: newest first, the image ID on the top row
    rc, out, _ = run(capsys, root, "history", "bb:1")
    lines = out.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert lines[1].startswith(image_id[7:19]) and lines[1].endswith("Imported from bb.tar")
    assert len(lines) == 2
    rc, out, _ = run(capsys, root, "history", "-q", "--no-trunc", "bb:1")
    assert out.split() == [image_id]


def test_tag_rmi_and_errors(capsys, root, busybox_tar):
    rc, out, _ = run(capsys, root, "import", str(busybox_tar), "app")
    image_id = out.strip()
    assert run(capsys, root, "tag", "app", "localhost:5000/team/app:v1")[0] == 0
    assert run(capsys, root, "tag", image_id[7:19], "app:2")[0] == 0
    rc, out, _ = run(capsys, root, "images", "--format", "json")
    assert sorted((json.loads(l)["Repository"], json.loads(l)["Tag"]) for l in out.splitlines()) == \
        [("app", "2"), ("app", "latest"), ("localhost:5000/team/app", "v1")]
    rc, out, err = run(capsys, root, "rmi", image_id[7:19])
    assert rc == 1 and "must be forced" in err
    rc, out, err = run(capsys, root, "rmi", "app:2", "localhost:5000/team/app:v1", "nothere")
    assert rc == 1 and "no such image: nothere" in err
    assert out.splitlines() == ["Untagged: app:2", "Untagged: localhost:5000/team/app:v1"]
    rc, out, _ = run(capsys, root, "rmi", "app")
    assert out.splitlines() == ["Untagged: app:latest", f"Deleted: {image_id}"]
    rc, out, _ = run(capsys, root, "images", "-q")
    assert out == ""
    rc, out, _ = run(capsys, root, "gc")
    assert rc == 0 and "Removed 3 blob(s), 1 layer(s) (1 extracted dir(s))" in out


def test_import_with_changes_and_stdin(capsys, root, busybox_tar, monkeypatch):
    rc, out, err = run(capsys, root, "import", "-c", 'CMD ["/bin/sh", "-c", "echo hi"]', "-c", "ENV A=1 B=two",
                       "-c", "EXPOSE 80", "-c", "WORKDIR /srv", "-c", "LABEL a=b", "-m", "my message",
                       str(busybox_tar), "cfg:1")
    assert rc == 0, err
    (info,) = json.loads(run(capsys, root, "inspect", "cfg:1")[1])
    assert info["Config"] == {"Cmd": ["/bin/sh", "-c", "echo hi"], "Env": ["A=1", "B=two"],
                              "ExposedPorts": {"80/tcp": {}}, "WorkingDir": "/srv", "Labels": {"a": "b"}}
    assert info["Comment"] == "my message"
    with open(busybox_tar, "rb") as f:
        p = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), "import", "-", "stdin:1"],
                           stdin=f, cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(sub(root, "inspect", "stdin:1").stdout)[0]["Comment"] == "Imported from -"


@pytest.mark.parametrize("args,message", [
    (["inspect", "nope"], "no such image: nope"),
    (["history", "nope:1"], "no such image: nope:1"),
    (["tag", "nope", "x"], "no such image: nope"),
    (["tag", "x", "Bad"], "must be lowercase"),
    (["import", "/does/not/exist.tar", "x"], "no such file"),
    (["import", "-c", "FROM x", "/does/not/exist.tar"], "invalid --change"),
    (["gc", "--cache-max-age", "soon"], "invalid duration"),
    (["prune", "--keep-storage", "lots"], "invalid size"),
])
def test_errors_are_one_line_without_traceback(root, args, message):
    p = sub(root, *args)
    assert p.returncode == 1
    assert message in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_corrupt_tarball_is_a_clear_error_and_changes_nothing(root, tmp_path, busybox_tar):
    bad = tmp_path / "bad.tar"
    data = bytearray(busybox_tar.read_bytes())
    data[148:156] = b"9999999\0"  # break the first header's checksum
    bad.write_bytes(bytes(data))
    p = sub(root, "import", str(bad), "bad")
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.startswith("lamina: ")
    assert sub(root, "images", "-q").stdout == ""
    assert sub(root, "fsck").returncode == 0


def test_prune_du_fsck(capsys, root, busybox_tar):
    # two images of one rootfs (different messages): one layer, stored once
    run(capsys, root, "import", "-m", "first", str(busybox_tar), "a")
    run(capsys, root, "import", "-m", "second", str(busybox_tar), "b")
    manifests = [json.loads(run(capsys, root, "inspect", ref)[1])[0]["Descriptor"]["digest"] for ref in "ab"]
    assert manifests[0] != manifests[1]
    (layer,) = {d["digest"] for m in manifests for d in json.loads(
        (root / "blobs" / "sha256" / m.split(":")[1]).read_bytes())["layers"]}
    blob = (root / "blobs" / "sha256" / layer.split(":")[1]).stat().st_size
    (ldir,) = (root / "layers").iterdir()
    extracted = sum(os.lstat(os.path.join(p, n)).st_size for p, _, names in os.walk(ldir) for n in names
                    if not os.path.islink(os.path.join(p, n)))

    rc, out, _ = run(capsys, root, "du")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["IMAGE", "LAYERS", "COMPRESSED", "EXTRACTED"]
    assert lines[1].split()[-2:] == [human_size(2 * blob), human_size(2 * extracted)]
    assert lines[1].startswith("logical") and lines[2].startswith("stored") and lines[3].startswith("saved by sharing")
    assert lines[2].split()[-2:] == lines[3].split()[-2:] == [human_size(blob), human_size(extracted)]
    assert "file dedup" not in out  # nothing linked: no such row
    assert "DISK USE" in out and "2 image(s), 1 layer(s) (1 shared by several images), 0 cache entries" in out
    rc, out, _ = run(capsys, root, "du", "--format", "json")
    du = json.loads(out)
    assert (du["logical_blob_bytes"], du["image_blob_bytes"], du["sharing_saved_blob_bytes"]) == (2 * blob, blob, blob)
    assert (du["logical_bytes"], du["image_layer_bytes"], du["sharing_saved_bytes"]) == (
        2 * extracted, extracted, extracted)
    assert du["dedup_saved_bytes"] == 0 and du["blob_count"] == 5 and du["shared_layers"] == 1

    rc, out, _ = run(capsys, root, "prune", "-f")
    assert rc == 0 and "Total reclaimed space: 0B" in out
    rc, out, _ = run(capsys, root, "fsck")
    assert rc == 0 and out.strip().endswith("1 layer dirs: ok")
    rc, out, _ = run(capsys, root, "fsck", "--quick")
    assert rc == 0 and "quick" in out and out.strip().endswith("ok")


# -- units, against go-units' documented behaviour -----------------------------------------

@pytest.mark.parametrize("n,text", [(0, "0B"), (999, "999B"), (1000, "1kB"), (1234, "1.23kB"),
                                    (4_860_000, "4.86MB"), (1_000_000_000, "1GB"), (123_456_789, "123MB")])
def test_human_size(n, text):
    assert human_size(n) == text


@pytest.mark.parametrize("seconds,text", [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (47 * 60, "47 minutes"), (3600, "About an hour"), (3 * 3600, "3 hours"), (47 * 3600, "47 hours"),
    (3 * 86400, "3 days"), (15 * 86400, "2 weeks"), (90 * 86400, "3 months"), (3 * 365 * 86400, "3 years"),
])
def test_human_duration(seconds, text):
    assert human_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize("text,n", [("32", 32), ("32b", 32), ("32k", 32 * 1024), ("32KB", 32 * 1024),
                                    ("32mb", 32 << 20), ("1.5g", int(1.5 * (1 << 30))), ("2GiB", 2 << 30)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text,s", [("24h", 86400), ("1h30m", 5400), ("90s", 90), ("7d", 7 * 86400), ("0", 0)])
def test_parse_duration(text, s):
    assert parse_duration(text) == timedelta(seconds=s)
    with pytest.raises(StoreError):
        parse_duration("h24")
