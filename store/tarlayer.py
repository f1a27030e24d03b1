"""Layer tars both ways: the public face of store.tarwrite (directory in overlay form ->
deterministic OCI layer tar) and store.tarextract (OCI layer tar -> directory in overlay
lower form, extracted safely). The byte format itself is store.tarformat."""

from __future__ import annotations

from lamina.store.tarextract import extract_tar, normalise
from lamina.store.tarformat import Entry, TarReader
from lamina.store.tarwrite import write_tar

__all__ = ["write_tar", "extract_tar", "normalise", "Entry", "TarReader"]
