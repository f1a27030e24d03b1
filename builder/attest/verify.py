"""`lamina verify`: rebuild an image from what its provenance records and compare.

    verify(store, source="app:1" | "app.tar", context=None | DIR | GIT-URL[#COMMIT])
    verify(store, context=DIR, dockerfile=FILE, expect="sha256:...")   # no provenance

1. The original: an image of the store, or an OCI archive (`lamina save --format
   oci`, `build --output type=oci`, `skopeo copy --all ... oci-archive:`), copied
   into the throw-away store with its attestations (store.attestations: the
   attestation manifest of the index).
2. The recorded build (builder.attest.provenance.read_predicate): Dockerfile path and
   digest (its text too with mode=max), context digest and git commit, build args,
   target, SOURCE_DATE_EPOCH, every base image by manifest digest.
3. The context: CONTEXT as a directory (its lamina content digest must equal the
   recorded one), or a git URL (cloned, and the recorded commit - or the one after
   `#` - checked out); no CONTEXT: the recorded git remote at the recorded commit.
4. A throw-away store (in the user store's tmp/, removed afterwards): each recorded
   base image copied in from the user store by manifest digest (as stored: same
   bytes), or pulled as name@digest; the original copied in too. The rebuild runs
   there with --no-cache, the recorded args, target and epoch.
5. Comparison. The image ID (config digest) is the identity: it names the content
   (layer diff_ids are digests of the uncompressed tars) and the config. The
   manifest digest also depends on the compressor's bytes (zstd/zlib version and
   parameters): same image ID with another manifest digest is reported as a
   compression-only difference, and still verifies. Different image IDs: the
   explanation of `lamina diff` (builder.imagediff): config fields, history, each
   differing layer and its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from lamina.builder.attest.provenance import RecordedBuild, context_digest, read_predicate
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.ulimits import within_own
from lamina.store import attestations, refs, repodigests
from lamina.store.errors import ImageNotFound, StoreError


@dataclass(frozen=True)
class VerifyResult:
    source: str
    original_id: str | None          # None in --expect mode when only a digest is known
    original_manifest: str | None
    rebuilt_id: str
    rebuilt_manifest: str
    identical: bool                  # same image ID (the identity)
    lines: tuple[str, ...] = ()      # the explanation (differences, compression notes)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        if self.identical:
            extra = "" if self.original_manifest in (None, self.rebuilt_manifest) else \
                " (manifest digest differs by layer compression only)"
            return (f"verified: {self.source} rebuilds identically: image ID {self.rebuilt_id}, "
                    f"manifest {self.rebuilt_manifest}{extra}")
        return (f"NOT reproducible: {self.source}: image ID {self.original_id or '?'} "
                f"(manifest {self.original_manifest or '?'}), rebuilt {self.rebuilt_id} "
                f"(manifest {self.rebuilt_manifest})")


# -- where the original and its provenance come from -------------------------------------

def _copy_image(src_store, manifest_digest: str, dst_store, tag: str | None):
    """Copy an image of `src_store` into `dst_store` with its stored bytes (an OCI
    archive with the stored zstd blobs: same manifest digest; attestations come
    along), tagged `tag`."""
    from lamina.store import archive

    tmp = dst_store.temp_path("copy.tar")
    try:
        archive.save(src_store, [manifest_digest], tmp, fmt="oci", compression="zstd")
        (loaded,) = archive.load(dst_store, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    if tag:
        dst_store.tag(tag, loaded.image.manifest_digest)
    return dst_store._load_image(loaded.image.manifest_digest)


def _original(user_store, tstore, source: str):
    """The image to verify, copied into the throw-away store (its attestations come
    along: `load` records those an OCI archive's index carries), and its predicates."""
    from lamina.store import archive

    if os.path.isfile(source):
        loaded = archive.load(tstore, source)
        if not loaded:
            raise StoreError(f"{source}: no image in the archive")
        image = loaded[0].image
    else:
        image = _copy_image(user_store, user_store.resolve(source).manifest_digest, tstore, None)
    return image, attestations.predicates(tstore, image.manifest_digest)


# -- the context -----------------------------------------------------------------------

def _looks_like_git(text: str) -> bool:
    return ("://" in text or text.endswith(".git") or "#" in text
            or (":" in text and "@" in text.split(":", 1)[0]))


def _git(*args: str, cwd: Path | None = None) -> str:
    try:
        # the URL comes from a (possibly hostile) provenance: never a transport that runs
        # a command (ext::, fd::), even where the user's git config allows them
        p = subprocess.run(["git", "-c", "safe.directory=*", "-c", "protocol.ext.allow=never",
                            "-c", "protocol.fd.allow=never", "-c", "submodule.recurse=false", *args],
                           capture_output=True, text=True, timeout=600, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"git {args[0]} failed: {e}") from None
    if p.returncode != 0:
        raise BuildError(f"git {args[0]} failed: {p.stderr.strip() or p.returncode}")
    return p.stdout.strip()


def clone_context(url: str, commit: str | None, dest: Path) -> tuple[Path, str]:
    """Clone `url` (`URL#COMMIT` names the commit) into dest; (dir, commit checked out)."""
    if "#" in url:
        url, _, wanted = url.partition("#")
        commit = wanted or commit
    # the URL and commit come from the image's provenance (hostile input): never options
    if commit and commit.startswith("-"):
        raise BuildError(f"the provenance names the git commit {commit!r}, which is not a commit")
    _git("clone", "--quiet", "--no-checkout", "--", url, str(dest))
    if commit:
        # a commit (full or abbreviated), a tag, or a branch of the origin
        for name in (commit, f"origin/{commit}"):
            try:
                found = _git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}", cwd=dest)
                break
            except BuildError:
                continue
        else:
            raise BuildError(f"the git repository {url} has no commit, tag or branch {commit!r}")
        _git("checkout", "--quiet", "--detach", found, cwd=dest)
    else:
        _git("checkout", "--quiet", cwd=dest)
    return dest, _git("rev-parse", "HEAD", cwd=dest)


def _context_digest(directory: Path, dockerfile: Path, stat_dir: Path) -> str:
    from lamina.builder.context.context import BuildContext

    ctx = BuildContext.open(directory, dockerfile, stat_dir)
    try:
        return context_digest(ctx.entries())
    finally:
        ctx.stat_cache.close()


# -- the rebuild -----------------------------------------------------------------------

def _verify_build_class():
    from lamina.builder.attest.record import RecordingBuild

    class VerifyBuild(RecordingBuild):
        """Resolves images the throw-away store lacks from the user's store (copied,
        same bytes) before pulling them."""

        user_store = None

        def resolve_image(self, ref, stage=None):
            if self.user_store is not None and not self.base_images.in_store(ref):
                try:
                    found = self.user_store.resolve(ref)
                except (ImageNotFound, StoreError):
                    found = None
                if found is not None:
                    copied = _copy_image(self.user_store, found.manifest_digest, self.store,
                                         None if "@" in ref or refs.looks_like_id(ref) else ref)
                    pinned = refs.parse(ref) if "@" in ref else None
                    if pinned is not None and pinned.digest not in (None, copied.manifest_digest):
                        # name@<index digest>: the image the user's store knows it by (a RepoDigest)
                        repodigests.record(self.store, pinned.name, pinned.digest, copied.manifest_digest)
            return super().resolve_image(ref, stage)

    return VerifyBuild


def _rebuild(tstore, user_store, *, context: Path, dockerfile: Path, build_args: Mapping[str, str],
             target: str | None, epoch: int | None, progress, network: str = "default",
             labels: Mapping[str, str] | None = None, ulimits: tuple = ()):
    from lamina.builder.executor import BuildOptions
    from lamina.builder.sandbox.limits import Limits

    options = BuildOptions(context_dir=context, dockerfile=dockerfile, build_args=dict(build_args),
                           target=target, no_cache=True, source_date_epoch=epoch, network=network,
                           labels=dict(labels or {}), limits=Limits(ulimits=tuple(ulimits)))
    cls = _verify_build_class()
    build = cls(tstore, options, progress)
    build.user_store = user_store
    return build.run(), build


def _seed_bases(tstore, user_store, recorded: RecordedBuild) -> list[str]:
    """Put every recorded base image, by its recorded digest, into the throw-away
    store under the name the Dockerfile uses. Returns notes."""
    from lamina.store.registry.pull import pull_image

    notes = []
    for ref, manifest_digest, _image_id in recorded.bases:
        tag = None if "@" in ref or refs.looks_like_id(ref) else ref
        try:
            user_store._load_image(manifest_digest)
            have = True
        except (ImageNotFound, StoreError):
            have = False
        if have:
            _copy_image(user_store, manifest_digest, tstore, tag)
            continue
        name = refs.parse(ref).name if not refs.looks_like_id(ref) else None
        if name is None:
            raise BuildError(f"base image {ref} ({manifest_digest}) is not in the store and has no name to pull")
        try:
            pulled = pull_image(tstore, f"{name}@{manifest_digest}", tag=False)
        except StoreError as e:
            raise BuildError(f"base image {ref} ({manifest_digest}, as the provenance records it) is not in "
                             f"the store and cannot be pulled as {name}@{manifest_digest}: {e.message} "
                             "(load or pull it first)") from None
        if tag:
            tstore.tag(tag, pulled.image.manifest_digest)
        notes.append(f"pulled base {name}@{manifest_digest}")
    return notes


def source_changes(recorded: RecordedBuild, rebuild) -> list[str]:
    """Remote sources (ADD URL, ADD git) whose digest the rebuild found other than
    recorded: the usual reason a rebuild differs without any local change."""
    notes = []
    for name, value in sorted(rebuild.remote_sources.items()):
        kind, _, where = name.partition(":")
        now = value.split()[0]
        then = recorded.remote_sources.get(where)
        if then is not None and then != now:
            notes.append(f"ADD source {where} is now {now}, the provenance records {then}")
    return notes


def _explain(tstore, original, rebuilt) -> list[str]:
    """The differences, as `lamina diff` explains them (builder.imagediff)."""
    from lamina.builder import imagediff
    from lamina.store.imagesource import from_store

    try:
        with from_store(tstore, original.manifest_digest, name="original") as a, \
                from_store(tstore, rebuilt.manifest_digest, name="rebuilt") as b:
            return imagediff.render_text(imagediff.compare(a, b)).rstrip("\n").splitlines()
    except StoreError as e:
        return [f"(the differences cannot be listed: {e})"]


def compression_only(image_a, image_b) -> list[str]:
    """When two images share their config (image ID) but not their manifest: which
    layer blobs differ although the layer content (diff_id) is the same."""
    lines = []
    for i, (x, y) in enumerate(zip(image_a.layers, image_b.layers)):
        if x.digest != y.digest:
            lines.append(f"layer {i + 1}: same content {x.diff_id[:19]}, other compressed bytes "
                         f"({x.media_type.rsplit('+', 1)[-1]} {x.digest[:19]} -> "
                         f"{y.media_type.rsplit('+', 1)[-1]} {y.digest[:19]})")
    return lines


def compare(tstore, source: str, original, rebuilt) -> VerifyResult:
    if original.config_digest == rebuilt.config_digest:
        lines = [] if original.manifest_digest == rebuilt.manifest_digest else \
            ["image ID identical; the manifest digests differ only in the compressed layer bytes:"] + \
            ["  " + l for l in compression_only(original, rebuilt)]
        return VerifyResult(source, original.config_digest, original.manifest_digest, rebuilt.config_digest,
                            rebuilt.manifest_digest, True, tuple(lines))
    return VerifyResult(source, original.config_digest, original.manifest_digest, rebuilt.config_digest,
                        rebuilt.manifest_digest, False, tuple(_explain(tstore, original, rebuilt)))


def _throwaway(user_store):
    from lamina.store.store import Store

    path = user_store.temp_path("verify")
    return path, Store(path)


def _cleanup(path: Path, tstore) -> None:
    from lamina.store.locks import remove_tree

    tstore.close()
    remove_tree(path)


def verify_provenance(user_store, source: str, context: str | None, *, dockerfile: Path | None = None,
                      progress=None) -> VerifyResult:
    """Rebuild `source` (a store reference or an OCI archive) from its provenance."""
    from lamina.builder.progress import Progress
    import sys

    progress = progress or Progress(sys.stderr)
    path, tstore = _throwaway(user_store)
    notes: list[str] = []
    try:
        orig, preds = _original(user_store, tstore, source)
        pred = preds.get(attestations.SLSA_PROVENANCE_V1)
        if pred is None:
            raise BuildError(f"{source} has no provenance attestation: build it with --provenance=true, or "
                             "verify with --dockerfile FILE CONTEXT --expect DIGEST")
        recorded = read_predicate(pred)
        work = path / "verify-work"
        work.mkdir()
        # the context
        if context is None:
            if not (recorded.git_remote and recorded.git_commit):
                raise BuildError("the provenance records no git remote for the context: give the "
                                 "context directory (or a git URL) after the image")
            ctx_dir, commit = clone_context(recorded.git_remote, recorded.git_commit, work / "context")
            cloned = True
        elif os.path.isdir(context) and not context.endswith(".git"):
            ctx_dir, commit, cloned = Path(context), None, False
        elif _looks_like_git(context) or os.path.isdir(context):
            ctx_dir, commit = clone_context(context, recorded.git_commit, work / "context")
            cloned = True
        else:
            raise BuildError(f"context {context!r} is neither a directory nor a git URL")
        if cloned and recorded.git_commit and commit != recorded.git_commit:
            raise BuildError(f"the context is commit {commit}, the provenance records {recorded.git_commit}")
        if cloned and recorded.git_dirty:
            raise BuildError(f"the build context had changes not committed to {recorded.git_commit}: a "
                             "clone cannot reproduce it; give the context directory")
        # the Dockerfile: given, else the context's (where its own .dockerignore sits),
        # else the text a mode=max provenance holds
        # the recorded path is hostile input: only a path inside the context is used
        rel = os.path.normpath(recorded.dockerfile_path or "Dockerfile")
        in_context = (None if os.path.isabs(rel) or rel == ".." or rel.startswith("../")
                      else ctx_dir / rel)
        if in_context is not None:
            # and it stays inside through the links of the (possibly cloned, hostile)
            # context: `sub -> /etc` must not make verify hash and name a host file
            real_ctx = os.path.realpath(ctx_dir)
            if not os.path.realpath(in_context).startswith(real_ctx.rstrip("/") + "/"):
                in_context = None
        if dockerfile is not None:
            df = Path(dockerfile)
        elif in_context is not None and (in_context.is_file() or recorded.dockerfile_text is None):
            df = in_context
        elif recorded.dockerfile_text is not None:
            df = work / "Dockerfile"
            df.write_text(recorded.dockerfile_text, encoding="utf-8")
        else:
            raise BuildError(f"the Dockerfile was outside the context ({recorded.dockerfile_path}) and the "
                             "provenance (mode=min) does not hold its text: give --dockerfile")
        try:
            from lamina.builder.context.contextfile import read_context_file

            got = "sha256:" + hashlib.sha256(read_context_file(df, "the Dockerfile")).hexdigest()
        except OSError as e:
            raise BuildError(f"cannot read the Dockerfile {df}: {e.strerror}") from None
        if got != recorded.dockerfile_digest:
            raise BuildError(f"the Dockerfile {df} is {got}, the provenance records {recorded.dockerfile_digest}")
        cd = _context_digest(ctx_dir, df, tstore.root / "cache" / "statcache")
        if cd != recorded.context_digest:
            raise BuildError(f"the context {context or recorded.git_remote} has content digest {cd}, the "
                             f"provenance records {recorded.context_digest}: it is not the context that was "
                             "built (files, their permission bits or links differ)")
        notes += _seed_bases(tstore, user_store, recorded)
        # never limits above lamina's own because a (possibly hostile) provenance says so
        ulimits, lowered = within_own(recorded.ulimits)
        notes += lowered
        rebuilt, rebuild = _rebuild(tstore, user_store, context=ctx_dir, dockerfile=df,
                                    build_args=recorded.build_args, target=recorded.target,
                                    epoch=recorded.source_date_epoch, progress=progress,
                                    labels=recorded.labels, ulimits=ulimits,
                                    # never the host's network because a
                                    # (possibly hostile) provenance says so
                                    network="none" if recorded.network == "host" else recorded.network)
        notes += source_changes(recorded, rebuild)
        result = compare(tstore, source, orig, rebuilt)
        return VerifyResult(**{**result.__dict__, "notes": tuple(notes)})
    finally:
        _cleanup(path, tstore)


def verify_expect(user_store, context: Path, dockerfile: Path, expect: str, *,
                  build_args: Mapping[str, str] | None = None, target: str | None = None,
                  epoch: int | None = None, progress=None) -> VerifyResult:
    """Rebuild from CONTEXT and a Dockerfile (no provenance) and compare with `expect`
    (an image ID or a manifest digest; an image of the store when it has one, whose
    differences are then explained)."""
    from lamina.builder.progress import Progress
    import sys

    progress = progress or Progress(sys.stderr)
    if not refs.is_digest(expect):
        raise BuildError(f"--expect {expect!r}: give an image ID or manifest digest (sha256:<64 hex>)")
    path, tstore = _throwaway(user_store)
    try:
        rebuilt, _ = _rebuild(tstore, user_store, context=Path(context), dockerfile=Path(dockerfile),
                              build_args=build_args or {}, target=target, epoch=epoch, progress=progress)
        if expect in (rebuilt.config_digest, rebuilt.manifest_digest):
            return VerifyResult(expect, rebuilt.config_digest if expect == rebuilt.config_digest else None,
                                expect if expect == rebuilt.manifest_digest else None,
                                rebuilt.config_digest, rebuilt.manifest_digest, True)
        try:
            known = user_store.resolve(expect)
        except (ImageNotFound, StoreError):
            known = None
        if known is None:
            return VerifyResult(expect, None, None, rebuilt.config_digest, rebuilt.manifest_digest, False,
                                (f"{expect} is neither the rebuilt image ID nor its manifest digest, and no "
                                 "image of the store has it: nothing to compare file by file",))
        orig = _copy_image(user_store, known.manifest_digest, tstore, None)
        return compare(tstore, expect, orig, rebuilt)
    finally:
        _cleanup(path, tstore)


def result_json(r: VerifyResult) -> str:
    return json.dumps({"source": r.source, "identical": r.identical, "original": {"id": r.original_id,
                       "manifest": r.original_manifest}, "rebuilt": {"id": r.rebuilt_id,
                       "manifest": r.rebuilt_manifest}, "explanation": list(r.lines), "notes": list(r.notes)})
