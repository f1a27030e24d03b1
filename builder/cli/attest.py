"""The attestation flags of `lamina build` (`--provenance`, `--sbom`, as buildx names
them) and what `lamina inspect --provenance / --sbom` prints.

`attestation_options` adds the two flags to a click command; `Attest.from_flags`
reads them back from the command's keyword arguments; `Attest.new_build` makes the
Build (a RecordingBuild when provenance is on) and `Attest.attach` records the
attestations of the built image (builder.attest.record).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import click

from lamina.builder.attest.provenance import parse_provenance, parse_sbom


def attestation_options(fn):
    fn = click.option("--sbom", "sbom", default=None, metavar="true|false",
                      help="Attach an SPDX 2.3 SBOM of the image's packages (dpkg, apk, Python, npm).")(fn)
    fn = click.option("--provenance", "provenance", default=None, metavar="true|false|mode=min|mode=max",
                      help="Attach SLSA provenance v1 (default mode=min, as buildx; mode=max adds the "
                           "Dockerfile and the step list).")(fn)
    return fn


@dataclass(frozen=True)
class Attest:
    provenance: str | None   # None, "min", "max"
    sbom: bool

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> "Attest":
        return cls(parse_provenance(flags.get("provenance")), parse_sbom(flags.get("sbom")))

    def new_build(self, store, options, progress):
        from lamina.builder.attest.record import RecordingBuild
        from lamina.builder.executor import Build

        return (RecordingBuild if self.provenance else Build)(store, options, progress)

    def attach(self, store, build, image) -> None:
        if self.provenance is None and not self.sbom:
            return
        from lamina.builder.attest.record import attach_attestations

        attach_attestations(store, build, image, provenance=self.provenance, sbom=self.sbom)


def print_attestations(root, refs_, *, provenance: bool, sbom: bool) -> None:
    """`lamina inspect --provenance|--sbom REF...`: the in-toto statements (subject:
    the stored image manifest) as JSON - one object, or a list when several."""
    from lamina.store import attestations
    from lamina.store.errors import StoreError
    from lamina.store.store import Store

    wanted = ([(attestations.SLSA_PROVENANCE_V1, "provenance")] if provenance else []) + \
             ([(attestations.SPDX_DOCUMENT, "sbom")] if sbom else [])
    out = []
    with Store(root) as store:
        for ref in refs_:
            image = store.resolve(ref)
            preds = attestations.predicates(store, image.manifest_digest)
            for ptype, what in wanted:
                if ptype not in preds:
                    hint = "--provenance=true" if what == "provenance" else "--sbom=true"
                    raise StoreError(f"image {ref} has no {what} attestation (build it with {hint})", ref=ref)
                out.append(attestations.statement(ptype, preds[ptype], image.manifest_digest))
    click.echo(json.dumps(out[0] if len(out) == 1 else out, indent=2, ensure_ascii=False))
