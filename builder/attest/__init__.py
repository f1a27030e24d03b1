"""builder.attest: the attestations of a build - SLSA provenance (provenance), the
SPDX SBOM (sbom), recording them for the built image (record) - and `lamina verify`
(verify: rebuild from the provenance, compare, explain)."""
