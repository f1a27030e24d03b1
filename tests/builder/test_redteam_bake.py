"""Red-team: a hostile Compose / bake file (it comes with the repository, as the
Dockerfile does) must not make `lamina bake` read or write host paths outside the
working directory, nor give RUN the host's network, unless `--allow` says so
(buildx's bake entitlements). It used to: `context: /etc` built host files into an
image, `output: type=local,dest=/` would unpack an image over the host's root."""

from __future__ import annotations

import os

import pytest

from tests.builder.buildkit import lamina, make_context

pytestmark = pytest.mark.root


@pytest.fixture
def repo(tmp_path):
    """(repository dir holding the bake file, a host dir outside it)."""
    repo, host = tmp_path / "repo", tmp_path / "host"
    make_context(repo / "app", "FROM bb\nCOPY . /in/\nRUN ls /in\n", {"own": "x"})
    host.mkdir()
    (host / "host-secret").write_text("host only\n")
    return repo, host


def bake(root, repo, text, *args):
    (repo / "compose.yaml").write_text(text)
    return lamina(root, "bake", "--progress", "plain", "-f", str(repo / "compose.yaml"), *args)


def test_context_outside_the_working_directory_needs_fs_read(build_store, repo):
    root, _ = build_store
    repo, host = repo
    text = f"services:\n  app:\n    build:\n      context: {host}\n      dockerfile: {repo}/app/Dockerfile\n"
    run = bake(root, repo, text)
    assert run.code == 1
    assert f"fs.read={host}" in run.stderr and "host-secret" not in run.stderr
    assert "built" not in run.stderr
    run = bake(root, repo, text, "--allow", f"fs.read={host}")
    assert run.code == 0, run.stderr
    assert "host-secret" in run.stderr  # the user allowed it: the RUN lists it


def test_symlinked_context_is_judged_by_its_target(build_store, repo):
    root, _ = build_store
    repo, host = repo
    os.symlink(host, repo / "link")
    run = bake(root, repo, "services:\n  app:\n    build:\n      context: link\n"
                           f"      dockerfile: {repo}/app/Dockerfile\n")
    assert run.code == 1 and f"fs.read={host}" in run.stderr


def test_output_outside_the_working_directory_needs_fs_write(build_store, repo):
    root, _ = build_store
    repo, host = repo
    dest = host / "unpacked"
    run = bake(root, repo, "services:\n  app:\n    build:\n      context: app\n"
                           f"      x-bake:\n        output: [\"type=local,dest={dest}\"]\n")
    assert run.code == 1 and f"fs.write={dest}" in run.stderr
    assert not dest.exists()
    inside = repo / "out"  # under the bake file's directory: allowed
    run = bake(root, repo, "services:\n  app:\n    build:\n      context: app\n"
                           f"      x-bake:\n        output: [\"type=local,dest={inside}\"]\n")
    assert run.code == 0, run.stderr
    assert (inside / "in" / "own").is_file()


def test_secret_file_outside_needs_fs_read(build_store, repo):
    root, _ = build_store
    repo, host = repo
    run = bake(root, repo, "services:\n  app:\n    build:\n      context: app\n"
                           "      secrets: [tok]\n"
                           f"secrets:\n  tok:\n    file: {host}/host-secret\n")
    assert run.code == 1 and f"fs.read={host}/host-secret" in run.stderr


def test_host_network_needs_network_host(build_store, repo):
    root, _ = build_store
    repo, host = repo
    text = "services:\n  app:\n    build:\n      context: app\n      network: host\n"
    run = bake(root, repo, text)
    assert run.code == 1 and "network.host" in run.stderr
    assert bake(root, repo, text, "--allow", "network.host").code == 0


def test_a_comma_in_an_object_entry_cannot_smuggle_keys_past_the_check(build_store, repo):
    # object-form entries are joined into `k=v,k=v` flags for `lamina build`: a value
    # "./out,dest=/HOST" would pass the path check as ./out and then write to /HOST
    import json

    root, _ = build_store
    repo, host = repo
    dest = host / "smuggled"
    definition = {"target": {"app": {"context": str(repo / "app"), "output": [
        {"type": "local", "dest": f"{repo}/out,dest={dest}"}]}}}
    (repo / "docker-bake.json").write_text(json.dumps(definition))
    run = lamina(root, "bake", "--progress", "plain", "-f", str(repo / "docker-bake.json"), "app")
    assert run.code == 1
    assert "holds a ','" in run.stderr and "Traceback" not in run.stderr
    assert not dest.exists() and not (repo / "out").exists()
