"""Why a step missed the cache: the inputs each step was last built with, kept per
(Dockerfile path, stage, step index) under ROOT/buildinfo, and compared with the
inputs of this build (builder.plan.cachekey.explain_miss) to say which one changed.
A record is written only when it changes (a no-op rebuild writes nothing)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lamina.builder.plan.cachekey import CacheInputs, explain_miss


class MissRecords:
    def __init__(self, directory: Path, dockerfile: Path) -> None:
        self.directory = Path(directory)
        self.dockerfile = os.path.abspath(dockerfile)

    def path(self, stage_name: str, step_index: int) -> Path:
        where = json.dumps([self.dockerfile, stage_name, step_index])
        return self.directory / hashlib.sha256(where.encode()).hexdigest()[:32]

    def previous(self, stage_name: str, step_index: int) -> CacheInputs | None:
        """The inputs the step was last built with here, or None."""
        try:
            return CacheInputs.from_json(self.path(stage_name, step_index).read_text())
        except (OSError, ValueError, TypeError):
            return None

    def why(self, stage_name: str, step_index: int, inputs: CacheInputs,
            fallback: CacheInputs | None = None) -> str:
        """Which input changed since the last build of the step (`fallback`: what
        another record, e.g. the remote cache's, says it was built with)."""
        previous = self.previous(stage_name, step_index) or fallback
        if previous is None:
            return "not built before"
        return explain_miss(previous, inputs)

    def remember(self, stage_name: str, step_index: int, inputs: CacheInputs) -> None:
        path = self.path(stage_name, step_index)
        text = inputs.to_json()
        try:
            if path.read_text() == text:
                return  # the same inputs as last time: nothing to write
        except (OSError, UnicodeDecodeError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
