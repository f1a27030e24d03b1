"""Images put into a test registry byte by byte (no lamina push involved): small
uncompressed tar layers made here, uploaded with the distribution API's monolithic
blob upload, and a manifest naming them. For tests of pull and auth that need an
image in a registry but not lamina's push."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Iterable

from lamina.store import oci


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files: dict[str, bytes]) -> bytes:
    """A ustar layer holding `files` (path -> content), entries in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def upload_blob(session, repo: str, data: bytes | Iterable[bytes], digest: str | None = None) -> str:
    """Upload one blob monolithically (POST, then PUT ?digest=); its digest. `data`
    may be an iterable of chunks (streamed), then `digest` is required."""
    digest = digest or digest_of(data)  # type: ignore[arg-type]
    scope = f"repository:{repo}:pull,push"
    with session.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, ok=(202,)) as r:
        location = r.headers["location"]
    sep = "&" if "?" in location else "?"
    body = data if isinstance(data, bytes) else (lambda: data)
    with session.request("PUT", f"{location}{sep}digest={digest}", scope=scope, body=body,
                         headers={"Content-Type": "application/octet-stream"}, ok=(201,), retry=False):
        pass
    return digest


def config_for(layers: list[bytes], arch: str = "amd64", cmd: list[str] | None = None) -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": cmd or ["true"]},
                       "rootfs": {"type": "layers", "diff_ids": [digest_of(l) for l in layers]}},
                      sort_keys=True).encode()


def put_manifest(session, repo: str, ref: str, body: bytes, media_type: str) -> str:
    with session.request("PUT", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull,push",
                         body=body, headers={"Content-Type": media_type}, ok=(201,)):
        pass
    return digest_of(body)


def push_layers(session, repo: str, tag: str, layers: list[bytes], arch: str = "amd64") -> str:
    """An OCI image of uncompressed `layers` under repo:tag; the manifest digest."""
    config = config_for(layers, arch)
    for blob in (*layers, config):
        upload_blob(session, repo, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "size": len(config), "digest": digest_of(config)},
        "layers": [{"mediaType": oci.OCI_LAYER, "size": len(l), "digest": digest_of(l)} for l in layers],
    }).encode()
    return put_manifest(session, repo, tag, manifest, oci.OCI_MANIFEST)
