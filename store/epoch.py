"""SOURCE_DATE_EPOCH: the one time every deterministic output is stamped with
(config `created`, history times, clamped file times), read from the caller or the
environment and validated here."""

from __future__ import annotations

import os

from lamina.store.errors import StoreError


def source_date_epoch(value: int | None = None) -> int | None:
    """The SOURCE_DATE_EPOCH in force: `value`, else the environment, else None."""
    if value is not None:
        return int(value)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None or env.strip() == "":  # empty or blank: unset (as the build CLI reads it)
        return None
    try:
        v = int(env.strip())
    except ValueError:
        raise StoreError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got {env!r}") from None
    if v < 0:
        raise StoreError(f"SOURCE_DATE_EPOCH must not be negative, got {env!r}")
    return v
