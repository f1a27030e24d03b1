"""`--format`, `--filter`, `-q`, `--no-trunc` of `lamina images`, `inspect` and
`history`, checked against docker's documented output:

- the tables and filter results of docs.docker.com "Filter commands" and the
  `docker image ls` reference (reference / label / dangling / before / since);
- docker's formatter: `table` headers (REPOSITORY, TAG, IMAGE ID, CREATED, SIZE;
  IMAGE, CREATED BY, COMMENT), Go's tabwriter with docker's minwidth 10 / padding 3
  (the doc tables show it: "TAG" padded to 10, "REPOSITORY" to 13), `--format json`
  fields of docker >= 23, `docker history --format "{{.ID}}: {{.CreatedSince}}"`;
- "Format command and log output" and Go's text/template: join, json, lower, upper,
  title, split, index, range, if; map / list printing (`map[foo:bar]`, `[a b]`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from lamina.builder.cli import main
from lamina.builder.cli.filters import FilterError, parse_image_filters, path_match, reference_match
from lamina.builder.cli.gotemplate import Record, TemplateError, TemplateSyntaxError, render
from lamina.builder.cli.listing import tabwrite
from lamina.builder.cli.version import probe_cgroup
from lamina.store.store import Store

REPO = Path(__file__).resolve().parents[2]

# docs.docker.com/config/filter (Filter commands): `docker images`
DOC_TABLE = """\
REPOSITORY   TAG       IMAGE ID       CREATED          SIZE
ubuntu       24.04     33a5cc25d22c   36 minutes ago   101MB
ubuntu       22.04     152dc042452c   36 minutes ago   88.1MB
alpine       3.21      a8cbb8c69ee7   40 minutes ago   8.67MB
alpine       latest    7144f7bab3d4   40 minutes ago   11.7MB
busybox      uclibc    3e516f71d880   48 minutes ago   2.4MB
busybox      glibc     7338d0c72c65   48 minutes ago   6.09MB
"""


def lamina(root: Path, capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["--root", str(root), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rootfs")
    tar = d / "root.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("etc/motd")
        data = b"hello\n"
        info.size = len(data)
        import io
        tf.addfile(info, io.BytesIO(data))
    return tar


def _import(store: Store, tar: Path, ref: str | None, age_s: int, labels=None) -> str:
    img = store.import_rootfs(tar, ref, source_date_epoch=int(time.time()) - age_s,
                              changes={"Labels": labels} if labels else None)
    return img.id


@pytest.fixture(scope="module")
def doc_store(tmp_path_factory, rootfs_tar) -> tuple[Path, dict[str, str]]:
    """The six images of docker's "Filter commands" page, created as long ago as there."""
    root = tmp_path_factory.mktemp("store")
    ids = {}
    with Store(root) as store:
        for ref, minutes, extra in (("busybox:glibc", 48, 1), ("busybox:uclibc", 48, 0),
                                    ("alpine:latest", 40, 1), ("alpine:3.21", 40, 0),
                                    ("ubuntu:22.04", 36, 1), ("ubuntu:24.04", 36, 0)):
            ids[ref] = _import(store, rootfs_tar, ref, minutes * 60 + 5 + extra)
    return root, ids


def _doc_rows(table: str, ids: dict[str, str], size: str) -> str:
    """A doc table with docker's IDs and sizes replaced by this store's (same widths:
    IDs are 12 characters, SIZE is the unpadded last column)."""
    out = []
    for line in table.splitlines():
        m = re.match(r"(\S+)(\s+)(\S+)(\s+)([0-9a-f]{12})(.*?)(\S+)$", line)
        if m and line.split()[0] != "REPOSITORY":
            ref = f"{m.group(1)}:{m.group(3)}"
            line = (m.group(1) + m.group(2) + m.group(3) + m.group(4) + ids[ref][7:19] + m.group(6) + size)
        out.append(line)
    return "\n".join(out) + "\n"


def _size(root: Path, capsys) -> str:
    return lamina(root, capsys, "images", "--format", "{{.Size}}")[1].splitlines()[0]


def test_default_table_is_dockers(doc_store, capsys):
    root, ids = doc_store
    rc, out, err = lamina(root, capsys, "images")
    assert rc == 0, err
    assert out == _doc_rows(DOC_TABLE, ids, _size(root, capsys))


def test_reference_filter_examples(doc_store, capsys):
    root, ids = doc_store
    size = _size(root, capsys)
    # "docker images --filter reference=alpine"
    rc, out, _ = lamina(root, capsys, "images", "--filter", "reference=alpine")
    assert out == _doc_rows("""\
REPOSITORY   TAG       IMAGE ID       CREATED          SIZE
alpine       3.21      a8cbb8c69ee7   40 minutes ago   8.67MB
alpine       latest    7144f7bab3d4   40 minutes ago   11.7MB
""", ids, size)
    # combining filters of one key is a logical OR
    rc, out, _ = lamina(root, capsys, "images", "--filter", "reference=alpine:latest", "--filter=reference=busybox")
    assert [l.split()[:2] for l in out.splitlines()[1:]] == [["alpine", "latest"], ["busybox", "uclibc"],
                                                             ["busybox", "glibc"]]
    # docker image ls reference: --filter=reference='busy*:*libc'
    rc, out, _ = lamina(root, capsys, "images", "--filter=reference=busy*:*libc", "--format", "{{.Repository}}:{{.Tag}}")
    assert out == "busybox:uclibc\nbusybox:glibc\n"
    # the positional REPOSITORY[:TAG] is the same match
    rc, out, _ = lamina(root, capsys, "images", "ubuntu", "--format", "{{.Repository}}:{{.Tag}}")
    assert out == "ubuntu:24.04\nubuntu:22.04\n"
    rc, out, _ = lamina(root, capsys, "images", "-q", "ubuntu:22.04")
    assert out == ids["ubuntu:22.04"][7:19] + "\n"


def test_quiet_no_trunc_digests_and_table_templates(doc_store, capsys):
    root, ids = doc_store
    order = ["ubuntu:24.04", "ubuntu:22.04", "alpine:3.21", "alpine:latest", "busybox:uclibc", "busybox:glibc"]
    assert lamina(root, capsys, "images", "-q")[1].split() == [ids[r][7:19] for r in order]
    assert lamina(root, capsys, "images", "-q", "--no-trunc")[1].split() == [ids[r] for r in order]
    # docker image ls: --format "{{.ID}}: {{.Repository}}" - one line per image, no header
    rc, out, _ = lamina(root, capsys, "images", "--format", "{{.ID}}: {{.Repository}}")
    assert out.splitlines() == [f"{ids[r][7:19]}: {r.split(':')[0]}" for r in order]
    # "table {{.ID}}\t{{.Repository}}\t{{.Tag}}": docker's headers, tabwriter columns
    # (IMAGE ID: 12 + 3; REPOSITORY: 10 + 3), the last column unpadded
    rc, out, _ = lamina(root, capsys, "images", "--format", r"table {{.ID}}\t{{.Repository}}\t{{.Tag}}")
    lines = out.splitlines()
    assert lines[0] == "IMAGE ID       REPOSITORY   TAG"
    assert lines[1] == f"{ids['ubuntu:24.04'][7:19]}   ubuntu       24.04"
    # --digests adds docker's DIGEST column after TAG. The digest is the image's
    # RepoDigests entry for the row's repository: an image never pushed or pulled has
    # none, and docker prints <none> (docs.docker.com `docker images --digests`; docker
    # 20.10: `docker import` then `docker images --digests` shows <none>)
    rc, out, _ = lamina(root, capsys, "images", "--digests", "alpine:latest")
    header, row = out.splitlines()
    assert re.split(r"\s{3,}", header)[:4] == ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID"]
    assert re.split(r"\s{3,}", row)[:4] == ["alpine", "latest", "<none>", ids["alpine:latest"][7:19]]
    assert lamina(root, capsys, "images", "--format", "{{.Digest}}", "alpine:latest")[1] == "<none>\n"
    # docker's NewImageFormat: --digests appends the DIGEST column to a table template
    rc, out, _ = lamina(root, capsys, "images", "--digests", "--format", r"table {{.ID}}", "alpine:latest")
    assert out.splitlines() == ["IMAGE ID       DIGEST", f"{ids['alpine:latest'][7:19]}   <none>"]


def test_format_json_has_dockers_fields(doc_store, capsys):
    root, ids = doc_store
    rc, out, _ = lamina(root, capsys, "images", "--format", "json", "alpine")
    objs = [json.loads(l) for l in out.splitlines()]
    assert len(objs) == 2
    # docker >= 23: one object per line, these keys, all strings
    assert all(list(o) == ["Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository",
                           "SharedSize", "Size", "Tag", "UniqueSize", "VirtualSize"] for o in objs)
    assert objs[0]["Repository"] == "alpine" and objs[0]["Tag"] == "3.21"
    assert objs[0]["ID"] == ids["alpine:3.21"][7:19] and objs[0]["CreatedSince"] == "40 minutes ago"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", objs[0]["CreatedAt"])  # Go's Time.String
    assert objs[0]["Containers"] == objs[0]["SharedSize"] == objs[0]["UniqueSize"] == "N/A"
    assert objs[0]["Size"] == objs[0]["VirtualSize"]
    # {{json .}} is the same object; {{json .Tag}} a JSON string
    assert lamina(root, capsys, "images", "--format", "{{json .}}", "alpine")[1] == out
    assert lamina(root, capsys, "images", "--format", "{{json .Tag}}", "alpine:3.21")[1] == '"3.21"\n'


@pytest.fixture
def store_root(tmp_path) -> Path:
    return tmp_path / "store"


def test_label_dangling_before_since(store_root, rootfs_tar, capsys):
    with Store(store_root) as store:
        # docker image ls docs: images made at different times, some with labels
        _import(store, rootfs_tar, "image3", 25 * 60)
        _import(store, rootfs_tar, "image2", 9 * 60, labels={"com.example.version": "1.0"})
        _import(store, rootfs_tar, "image1", 4 * 60, labels={"com.example.version": "2.0", "a": "b"})
        untagged = _import(store, rootfs_tar, None, 60 * 60)

    def refs(*flt: str) -> list[str]:
        args = [a for f in flt for a in ("--filter", f)]
        rc, out, err = lamina(store_root, capsys, "images", *args, "--format", "{{.Repository}}")
        assert rc == 0, err
        return out.split()

    assert refs() == ["image1", "image2", "image3", "<none>"]
    assert refs("label=com.example.version") == ["image1", "image2"]
    assert refs("label=com.example.version=1.0") == ["image2"]
    assert refs("label=com.example.version", "label=a=b") == ["image1"]  # labels: all must match
    assert refs("dangling=true") == ["<none>"]
    assert lamina(store_root, capsys, "images", "-f", "dangling=true", "-q", "--no-trunc")[1] == untagged + "\n"
    assert refs("dangling=false") == ["image1", "image2", "image3"]
    assert refs("before=image1") == ["image2", "image3", "<none>"]
    assert refs("since=image3") == ["image1", "image2"]
    assert refs("since=image3", "before=image1") == ["image2"]
    assert refs("before=image3", "label=a") == []
    assert refs("reference=image*", "dangling=false", "since=image2") == ["image1"]


def test_digest_column_is_the_repositorys(store_root, rootfs_tar, capsys):
    """The DIGEST of a row is the RepoDigests entry of the row's repository (docker's
    formatter.imageFormatTaggedAndDigest). Expected rows are what docker 20.10.24 printed
    for the same references: `docker import` as local:1, tagged REG/app:1, REG/app:2,
    REG/other:1, REG/app:1 pushed; then everything removed and REG/app@DIGEST pulled."""
    from lamina.store import repodigests

    reg, digest = "127.0.0.1:5000", "sha256:" + "4a9387" * 10 + "abcd"
    with Store(store_root) as store:
        image = store.import_rootfs(rootfs_tar, "local:1")
        for ref in (f"{reg}/app:1", f"{reg}/app:2", f"{reg}/other:1"):
            store.tag(ref, "local:1")
        repodigests.record(store, f"{reg}/app", digest, image.manifest_digest)  # as a push does

    def rows(*args: str, fmt="{{.Repository}}:{{.Tag}} [{{.Digest}}]") -> list[str]:
        rc, out, err = lamina(store_root, capsys, "images", *args, "--format", fmt)
        assert rc == 0, err
        return out.splitlines()

    pushed = [f"{reg}/app:1 [{digest}]", f"{reg}/app:2 [{digest}]", f"{reg}/other:1 [<none>]",
              "local:1 [<none>]"]
    assert rows("--digests") == pushed
    assert rows() == pushed  # a format naming {{.Digest}} shows it without --digests too
    # ...written just so: docker's needDigest is a text search for "{{.Digest}}"
    assert rows(fmt="{{ .Digest }}") == ["<none>"] * 4
    assert {json.loads(l)["Digest"] for l in rows(fmt="{{json .}}")} == {"<none>"}
    rc, out, _ = lamina(store_root, capsys, "images", "--digests", f"{reg}/app")
    assert [re.split(r"\s{3,}", l)[:3] for l in out.splitlines()[1:]] == [
        [f"{reg}/app", "1", digest], [f"{reg}/app", "2", digest]]
    # the reference filter selects RepoDigests too: `REG/app:1` does not match
    # `REG/app@DIGEST`, so docker 20.10 shows <none> for `images --digests REG/app:1`
    assert rows("--digests", f"{reg}/app:1") == [f"{reg}/app:1 [<none>]"]
    assert rows("--digests", "--filter", f"reference={reg}/app@{digest}") == [
        f"{reg}/app:<none> [{digest}]"]
    # only the digest of the repository: REG/other was never pushed
    assert rows("--digests", f"{reg}/other") == [f"{reg}/other:1 [<none>]"]

    # an image known only by digest (pulled by digest, no tag): a row of its own
    with Store(store_root) as store:
        for ref in ("local:1", f"{reg}/app:1", f"{reg}/app:2", f"{reg}/other:1"):
            store.remove_image(ref)
        image = store.import_rootfs(rootfs_tar, None)
        repodigests.record(store, f"{reg}/app", digest, image.manifest_digest)
    assert rows("--digests") == [f"{reg}/app:<none> [{digest}]"]
    assert rows() == [f"{reg}/app:<none> []"]  # docker: "" without --digests
    assert rows(fmt="{{.Repository}}:{{.Tag}}") == [f"{reg}/app:<none>"]
    assert rows("--digests", "--filter", "dangling=true") == [f"{reg}/app:<none> [{digest}]"]
    assert rows("--digests", "--filter", "dangling=false") == [f"{reg}/app:<none> [{digest}]"]
    assert rows("--digests", f"{reg}/app") == [f"{reg}/app:<none> [{digest}]"]
    assert rows("--digests", "local") == []
    # tagged in another repository: the tag's row has no digest, the digest its own row
    with Store(store_root) as store:
        store.tag("local:2", image.manifest_digest)
    assert rows("--digests") == ["local:2 [<none>]", f"{reg}/app:<none> [{digest}]"]
    assert rows("--digests", "local") == ["local:2 [<none>]"]


def test_repo_digests_of_a_pushed_image(store_root, rootfs_tar, capsys, tmp_path):
    """After a push to a real registry (Debian's docker-registry), `inspect --format
    '{{index .RepoDigests 0}}'` is `REPOSITORY@DIGEST` with the digest the registry
    serves for the tag (its Docker-Content-Digest, and the sha256 of the bytes it
    returns), and `images --digests` shows that digest on the pushed repository's row."""
    import hashlib

    import httpx

    from tests.store.registryfix import registry

    with Store(store_root) as store:
        store.import_rootfs(rootfs_tar, "local:1")
    assert lamina(store_root, capsys, "inspect", "--format", "{{json .RepoDigests}}", "local:1")[1] == "[]\n"
    with registry(tmp_path / "registry") as host:
        rc, _, err = lamina(store_root, capsys, "push", "local:1", f"{host}/team/app:1")
        assert rc == 0, err
        accept = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.oci.image.index.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json"])
        served = httpx.get(f"http://{host}/v2/team/app/manifests/1", headers={"Accept": accept})
        assert served.status_code == 200
    digest = served.headers["Docker-Content-Digest"]
    assert digest == "sha256:" + hashlib.sha256(served.content).hexdigest()
    rc, out, err = lamina(store_root, capsys, "inspect", "--format", "{{index .RepoDigests 0}}", "local:1")
    assert rc == 0, err
    assert out == f"{host}/team/app@{digest}\n"
    rc, out, err = lamina(store_root, capsys, "images", "--digests", "--format",
                          "{{.Repository}}:{{.Tag}} {{.Digest}}")
    # pushed as another name, not tagged here: the repository has a row of its own, after
    # the tags' rows (docker's order), TAG <none>
    assert out.splitlines() == ["local:1 <none>", f"{host}/team/app:<none> {digest}"]


@pytest.mark.parametrize("args, message", [
    (["--filter", "color=red"], "invalid filter 'color'"),
    (["--filter", "dangling"], "bad format of filter"),
    (["--filter", "dangling=maybe"], "invalid filter 'dangling=maybe'"),
    (["--filter", "reference=[a-"], "syntax error in pattern"),
    (["--format", "{{template \"x\"}}"], "not in lamina's Go-template subset"),
    (["--format", "{{nosuch .ID}}"], 'function "nosuch" not defined'),
    (["--format", "{{if .ID}}x"], "without {{end}}"),
])
def test_usage_errors_exit_2(store_root, capsys, args, message):
    rc, out, err = lamina(store_root, capsys, "images", *args)
    assert rc == 2 and message in err and "Traceback" not in err
    assert not store_root.exists()  # refused before the store is opened


def test_template_runtime_errors_exit_1(doc_store, capsys):
    root, _ = doc_store
    rc, out, err = lamina(root, capsys, "images", "--format", "{{.Nope}}")
    assert rc == 1 and "can't evaluate field Nope" in err
    rc, out, err = lamina(root, capsys, "inspect", "--format", "{{index .RepoDigests 0}}", "alpine:3.21")
    assert rc == 1 and "index out of range: 0" in err
    rc, out, err = lamina(root, capsys, "images", "--filter", "before=nothere:1")
    assert rc == 1 and "nothere:1" in err


def test_inspect_templates(store_root, rootfs_tar, capsys):
    with Store(store_root) as store:
        image_id = store.import_rootfs(rootfs_tar, "bad:latest", changes={
            "Labels": {"foo": "bar"}, "Env": ["PATH=/usr/bin:/bin", "A=<b> & c"]}).id
        store.tag("bad:2", "bad:latest")
    info = json.loads(lamina(store_root, capsys, "inspect", "bad")[1])[0]

    def fmt(template: str, ref: str = "bad") -> str:
        rc, out, err = lamina(store_root, capsys, "inspect", "--format", template, ref)
        assert rc == 0, err
        return out

    assert fmt("{{.Id}}") == image_id + "\n"
    assert fmt("{{.ID}}") == image_id + "\n"             # docker's struct field name works too
    assert fmt("{{json .ID}}") == json.dumps(image_id) + "\n"
    # moby#50618: `docker image inspect bad:latest --format '{{.Config.Labels}}'` -> map[foo:bar]
    assert fmt("{{.Config.Labels}}") == "map[foo:bar]\n"
    # json: Go's encoder with HTML escaping off, compact
    assert fmt("{{json .Config.Env}}") == '["PATH=/usr/bin:/bin","A=<b> & c"]\n'
    assert fmt("{{.Config.Env}}") == "[PATH=/usr/bin:/bin A=<b> & c]\n"
    assert fmt("{{index .RepoTags 0}}") == "bad:2\n"
    assert fmt('{{index .Config.Labels "foo"}}') == "bar\n"
    assert fmt('{{join .RepoTags ","}}') == "bad:2,bad:latest\n"
    assert fmt("{{range .RepoTags}}{{println .}}{{end}}") == "bad:2\nbad:latest\n\n"
    assert fmt("{{if .RepoDigests}}pushed{{else}}local{{end}} {{len .RootFS.Layers}}") == "local 1\n"
    assert fmt("{{.Os}}/{{.Architecture}} {{.Size}}") == f"{info['Os']}/{info['Architecture']} {info['Size']}\n"
    assert fmt("{{json .RootFS}}") == json.dumps(info["RootFS"], separators=(",", ":")) + "\n"
    # several images: the template once per image; `json` gives docker's list
    rc, out, _ = lamina(store_root, capsys, "inspect", "-f", "{{.Id}}", "bad:2", "bad:latest")
    assert out == f"{image_id}\n{image_id}\n"
    assert json.loads(lamina(store_root, capsys, "inspect", "--format", "json", "bad")[1]) == [info]


def test_history_formats(store_root, rootfs_tar, capsys):
    long_cmd = "/bin/sh -c #(nop) ADD file:71356d2ad59aa3119d0123456789abcdef in /"
    with Store(store_root) as store:
        base = store.resolve(store.import_rootfs(rootfs_tar, "base", source_date_epoch=0).id)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 29 * 24 * 3600))
        img = store.commit_image({"created": created, "config": {"Cmd": ["sh"]}, "history": [
            {"created": created, "created_by": long_cmd},
            {"created": created, "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True,
             "comment": "made\tby hand"}]}, list(base.layers), ["busybox"])
    # docker history --format "{{.ID}}: {{.CreatedSince}}" busybox
    rc, out, err = lamina(store_root, capsys, "history", "--format", "{{.ID}}: {{.CreatedSince}}", "busybox")
    assert rc == 0, err
    assert out == f"{img.short_id}: 4 weeks ago\n<missing>: 4 weeks ago\n"
    rc, out, _ = lamina(store_root, capsys, "history", "busybox")
    lines = out.splitlines()
    assert re.split(r"\s{3,}", lines[0]) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    # CREATED BY cut to 45 characters with docker's ellipsis
    assert long_cmd[:44] + "…" in lines[2] and long_cmd not in out
    rc, out, _ = lamina(store_root, capsys, "history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}", "busybox")
    assert out.splitlines() == [f"{img.id}|/bin/sh -c #(nop)  CMD [\"sh\"]", f"<missing>|{long_cmd}"]
    assert lamina(store_root, capsys, "history", "-q", "busybox")[1] == f"{img.short_id}\n<missing>\n"
    rc, out, _ = lamina(store_root, capsys, "history", "--format", "json", "busybox")
    first = json.loads(out.splitlines()[0])
    assert list(first) == ["Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size"]
    assert first["CreatedAt"] == created and first["Size"] == "0B" and first["Comment"] == "made\tby hand"
    rc, out, _ = lamina(store_root, capsys, "history", "-H", "false", "--format", "{{.CreatedSince}} {{.Size}}",
                        "busybox")
    assert out.splitlines()[1] == f"{created} {base.size}"


# -- the template language ---------------------------------------------------------------

@pytest.mark.parametrize("template, data, expected", [
    # "Format command and log output"
    ('{{join .Args " , "}}', {"Args": ["a", "b", "c"]}, "a , b , c"),
    ("{{json .Mounts}}", {"Mounts": [{"Type": "bind", "Source": "/x"}]}, '[{"Type":"bind","Source":"/x"}]'),
    ("{{lower .Name}}", {"Name": "/MyName"}, "/myname"),
    ("{{upper .Name}}", {"Name": "/MyName"}, "/MYNAME"),
    ("{{title .Name}}", {"Name": "my name-is x_y"}, "My Name-Is X_y"),
    ('{{split .Image ":"}}', {"Image": "ubuntu:24.04"}, "[ubuntu 24.04]"),
    ("{{range .N}}{{println .IPAddress}}{{end}}", {"N": {"b": {"IPAddress": "2"}, "a": {"IPAddress": "1"}}},
     "1\n2\n"),
    # Go's text/template
    ("{{.A.B}}", {"A": {"B": 3}}, "3"),
    ("{{.A.Nope}}", {"A": {}}, "<no value>"),
    ("{{.A}}", {"A": None}, "<nil>"),
    ("{{.A}} {{.B}}", {"A": True, "B": 1.5}, "true 1.5"),
    ("{{.M}}", {"M": {"z": [1, 2], "a": "x"}}, "map[a:x z:[1 2]]"),
    ("{{index .L 1}}", {"L": ["x", "y"]}, "y"),
    ("{{.L | len}}", {"L": ["x", "y"]}, "2"),
    ("{{if eq .A \"x\"}}yes{{else if .B}}b{{else}}no{{end}}", {"A": "y", "B": 0}, "no"),
    ("{{range $k, $v := .M}}{{$k}}={{$v}};{{end}}", {"M": {"b": 1, "a": 2}}, "a=2;b=1;"),
    ("{{range .L}}x{{else}}empty{{end}}", {"L": []}, "empty"),
    ("{{with .A}}{{.B}}{{end}}", {"A": {"B": "in"}}, "in"),
    ("a {{- \" b \" -}} c", {}, "a b c"),
    ("{{/* a comment */}}ok", {}, "ok"),
    ("{{$x := .A}}{{$x}}{{$.A}}", {"A": "v"}, "vv"),
    ('{{printf "%s=%d" .K .V}}', {"K": "n", "V": 7}, "n=7"),
    ("{{and .A .B}} {{or .A .B}} {{not .A}}", {"A": "", "B": "b"}, " b true"),
    ('{{(index .L 0).Name}}', {"L": [{"Name": "first"}]}, "first"),
])
def test_go_template_semantics(template, data, expected):
    assert render(template, data) == expected


def test_record_json_is_dockers_marshal():
    # docker's listing contexts marshal with Go's json.Marshal (HTML-escaping)
    row = Record(Digest="<none>", Tag="a&b")
    assert render("{{json .}}", row) == '{"Digest":"\\u003cnone\\u003e","Tag":"a\\u0026b"}'
    assert render("{{json .Digest}}", row) == '"<none>"'
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render("{{.Nope}}", row)
    with pytest.raises(TemplateSyntaxError):
        render("{{define \"x\"}}{{end}}", row)


def test_tabwriter_is_gos():
    # Go: tabwriter.NewWriter(w, 10, 1, 3, ' ', 0) - cells padded to max(width+3, 10);
    # a column block ends at a line without that cell; text after the last tab is not a cell
    assert tabwrite("a\tb\tc\nlonger-cell\tx\n") == "a             b         c\nlonger-cell   x\n"
    assert tabwrite("a\tb\nsingle\nccc\td\n") == "a         b\nsingle\nccc       d\n"


# Go's path.Match test table (src/path/match_test.go)
@pytest.mark.parametrize("pattern, name, ok", [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True), ("a*", "abc", True),
    ("a*", "ab/c", False), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False), ("ab[c]", "abc", True), ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True), ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False), ("[a-ζ]*", "α", True), ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False), ("a*b", "a/b", False), ("[\\]a]", "]", True), ("[\\-]", "-", True),
    ("[x\\-]", "x", True), ("[x\\-]", "-", True), ("[x\\-]", "z", False), ("[\\-x]", "x", True),
    ("[\\-x]", "-", True), ("[\\-x]", "a", False), ("*x", "xxx", True),
])
def test_path_match(pattern, name, ok):
    assert path_match(pattern, name) is ok


@pytest.mark.parametrize("pattern", ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc"])
def test_path_match_bad_patterns(pattern):
    with pytest.raises(FilterError):
        parse_image_filters([f"reference={pattern}"])


def test_reference_match_is_familiar_match():
    assert reference_match("alpine", "alpine:3.21")          # the name alone
    assert reference_match("alpine:3.*", "alpine:3.21")
    assert not reference_match("alpine:latest", "alpine:3.21")
    assert reference_match("localhost:5000/*", "localhost:5000/app:v1")
    assert not reference_match("*", "localhost:5000/app:v1")  # * never crosses "/"


# -- version, completion, exit codes --------------------------------------------------------

def test_version_reports_host(capsys):
    from importlib import metadata
    import platform
    rc = main(["version", "--format", "json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert info["lamina"] == metadata.version("lamina")
    assert info["python"].startswith(f"{platform.python_implementation()} {platform.python_version()}")
    assert platform.release() in info["kernel"]
    overlay = any(l.split()[-1:] == ["overlay"] for l in Path("/proc/filesystems").read_text().splitlines())
    assert (info["overlay"] == "yes") is overlay
    assert info["seccomp"] == ("yes" if "Seccomp:" in Path("/proc/self/status").read_text() else "no")
    import shutil
    assert ("slirp4netns" in info["network_helper"]) is bool(shutil.which("slirp4netns"))
    rc = main(["version"])
    text = capsys.readouterr().out
    for label in ("lamina:", "Python:", "Kernel:", "overlayfs:", "User namespaces:", "cgroups:", "seccomp:",
                  "Network helper:"):
        assert label in text


def test_cgroup_probe():
    v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    hybrid = ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
              "42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    v1 = ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
          "42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert probe_cgroup(v2) == "v2"
    assert probe_cgroup(hybrid).startswith("v1 (hybrid")
    assert probe_cgroup(v1) == "v1"
    assert probe_cgroup("") == "none"


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                           ("fish", "complete --no-files --command lamina")])
def test_shell_completion_scripts(shell, marker):
    lamina_bin = Path(sys.executable).parent / "lamina"
    env = {**os.environ, "_LAMINA_COMPLETE": f"{shell}_source"}
    p = subprocess.run([str(lamina_bin)], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert marker in p.stdout and "_LAMINA_COMPLETE" in p.stdout


def test_bash_completes_commands():
    lamina_bin = Path(sys.executable).parent / "lamina"
    env = {**os.environ, "_LAMINA_COMPLETE": "bash_complete", "COMP_WORDS": "lamina ima", "COMP_CWORD": "1"}
    p = subprocess.run([str(lamina_bin)], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "plain,images" in p.stdout.splitlines()


def test_exit_codes(store_root, capsys):
    assert main(["--root", str(store_root), "images", "--no-such-flag"]) == 2   # usage
    assert main(["--root", str(store_root), "inspect", "nothere"]) == 1         # command failure
    assert main(["--root", str(store_root), "images"]) == 0
    capsys.readouterr()


@pytest.mark.root
def test_build_exit_codes_are_dockers(build_store, tmp_path):
    """`docker build` exits 1 when the build fails (a RUN's own status is not passed
    through: 7 here) and 2 for a usage error (docker's cobra flag errors, `docker
    build` without a context): scripts test exactly these."""
    from tests.builder.buildkit import build, lamina as run_lamina, make_context

    root, _ = build_store
    failing = build(root, make_context(tmp_path / "run", "FROM bb\nRUN exit 7\n"))
    assert failing.code == 1, failing.stderr
    assert "did not complete successfully: exit code: 7" in failing.stderr  # BuildKit's words
    syntax = build(root, make_context(tmp_path / "syntax", "FROM bb\nCOPY --nosuch=1 a /a\n"))
    assert syntax.code == 1 and "unknown flag: nosuch" in syntax.stderr, syntax.stderr
    unknown = build(root, make_context(tmp_path / "unknown", "FROM bb\nFROBNICATE x\n"))
    assert unknown.code == 1, unknown.stderr
    assert "Traceback" not in failing.stderr + syntax.stderr + unknown.stderr
    assert run_lamina(root, "build", "--no-such-flag", str(tmp_path / "run")).code == 2
    assert run_lamina(root, "build").code == 2  # no context
    assert run_lamina(root, "build", "--network", "bogus", str(tmp_path / "run")).code == 2
