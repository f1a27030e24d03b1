"""A stack of layer dirs as overlayfs takes it: each dir once, at its top-most place.
Shared by the kernel overlay (builder.sandbox.overlay) and fuse-overlayfs
(builder.sandbox.fuseoverlay). Pure."""

from __future__ import annotations

import os
from pathlib import Path


def distinct(lower_dirs) -> list[Path]:
    """The stack with each layer dir once, at its top-most place. Two steps writing the
    same bytes share one layer dir, and overlayfs refuses a lowerdir given twice
    ("conflicting lowerdir path"); the lower copy adds nothing to the merged view, as
    the top-most one already shows every entry of it and hides what lies below."""
    seen: set[str] = set()
    out = []
    for p in lower_dirs:
        key = os.path.normpath(os.fspath(p))
        if key not in seen:
            seen.add(key)
            out.append(Path(p))
    return out
