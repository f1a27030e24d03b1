"""TarScan: the push-fed check of an uncompressed tar stream (a layer arriving from a
registry, store.layerdigest), which accepts and refuses exactly what
store.tarformat.TarReader does, in pieces of any size, without copying member data."""

from __future__ import annotations

import re

from lamina.store.errors import CorruptContent
from lamina.store.tarformat import (BLOCK, CONTTYPE, GNU_LONGNAME, MAX_GLOBAL_PAX,
                                    MAX_LOCAL_PAX, MAX_META, PAX_GLOBAL, PAX_LOCAL, REGTYPE,
                                    ZERO_BLOCK, _EXTENDED, _NO_DATA_TYPES,
                                    _add_pax, _check_header, _cstr, _data_size, _entry)


# a number field _parse_number reads without question: octal digits, NUL/space padded
# (base-256 fields, signs or other spellings go the long way)
_PLAIN_OCTAL = re.compile(rb"[ \0]*[0-7]*[ \0]*")
# the old regular type (a trailing '/' makes it a directory), sparse files and the
# extended headers: _entry / _apply decide these
_NOT_FAST = frozenset((b"\0", b"S", b"x", b"g", b"L", b"K"))


class TarScan:
    """Checks an uncompressed tar stream fed in pieces of any size exactly as TarReader
    reads it - every header, checksum, number field, PAX record and GNU long name, up to
    the end-of-archive marker - without copying member data: the walk of a layer that
    arrives from a registry, where only validity matters. `feed()` raises CorruptContent
    at the first bad header; `finish()` at the end of the stream raises it when the
    stream stopped before its end-of-archive marker."""

    def __init__(self) -> None:
        self.offset = 0          # stream bytes consumed
        self.ended = False       # the end-of-archive marker was seen
        self._skip = 0           # member data + padding still to pass over
        self._want = BLOCK       # size of the unit being collected: a header, or
        self._extended: tuple[bytes, int] | None = None  # ... the data of this extended header
        self._part = bytearray()
        self._unit_start = 0
        self._global: dict[bytes, bytes] = {}
        self._global_bytes = 0
        self._pax: dict[bytes, bytes] = {}
        self._pax_bytes = 0
        self._longname: bytes | None = None
        self._longlink: bytes | None = None

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, n = 0, len(view)
        while pos < n and not self.ended:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                self.offset += k
                continue
            if not self._part:
                self._unit_start = self.offset
            k = min(self._want - len(self._part), n - pos)
            if not self._part and k == self._want:
                unit = bytes(view[pos:pos + k])
            else:
                self._part += view[pos:pos + k]
                if len(self._part) < self._want:
                    self.offset += k
                    return
                unit, self._part = bytes(self._part), bytearray()
            pos += k
            self.offset += k
            self._unit(unit)

    def _member_fast(self, unit: bytes, typeflag: bytes, size: int) -> bool:
        """The common member - no PAX or GNU long name before it, a type other than
        the old regular type (whose trailing-slash rule needs the name) or sparse, and
        plain octal number fields - checked as _entry checks it without building an
        Entry; False leaves the member to _entry (whatever it decides)."""
        if self._global or self._pending() or typeflag in _NOT_FAST:
            return False
        octal = _PLAIN_OCTAL.fullmatch
        if not (octal(unit, 100, 108) and octal(unit, 108, 116) and octal(unit, 116, 124)
                and octal(unit, 136, 148)):
            return False
        if unit[257:262] == b"ustar" and not (octal(unit, 329, 337) and octal(unit, 337, 345)):
            return False
        regular = typeflag in (REGTYPE, CONTTYPE) or typeflag not in _NO_DATA_TYPES
        self._skip = size + (-size % BLOCK) if regular else 0
        return True

    def _pending(self) -> bool:
        return bool(self._pax) or self._longname is not None or self._longlink is not None

    def _unit(self, unit: bytes) -> None:
        if self._extended is not None:
            typeflag, size = self._extended
            self._extended, self._want = None, BLOCK
            self._apply(typeflag, unit)
            self._skip = -size % BLOCK
            return
        start = self._unit_start
        if unit == ZERO_BLOCK:
            if self._pending():
                raise CorruptContent(f"tar stream ends inside an extended header at byte {start}")
            self.ended = True
            return
        typeflag, size = _check_header(unit, start)
        if self._member_fast(unit, typeflag, size):
            return
        what = _EXTENDED.get(typeflag)
        if what is not None:
            if size > MAX_META:
                raise CorruptContent(f"tar {what} of {size} bytes is larger than allowed ({MAX_META})")
            if size:
                self._extended, self._want = (typeflag, size), size
            else:
                self._apply(typeflag, b"")
            return
        e = _entry(unit, typeflag, size, {**self._global, **self._pax}, self._longname, self._longlink)
        self._pax, self._longname, self._longlink = {}, None, None
        self._pax_bytes = 0
        data = _data_size(e)
        self._skip = data + (-data % BLOCK)

    def _apply(self, typeflag: bytes, data: bytes) -> None:
        if typeflag == PAX_LOCAL:
            self._pax_bytes = _add_pax(self._pax, data, self._pax_bytes, MAX_LOCAL_PAX,
                                       "PAX header of one member")
        elif typeflag == PAX_GLOBAL:
            self._global_bytes = _add_pax(self._global, data, self._global_bytes,
                                          MAX_GLOBAL_PAX, "PAX global header")
        elif typeflag == GNU_LONGNAME:
            self._longname = _cstr(data)
        else:
            self._longlink = _cstr(data)

    def finish(self) -> None:
        """The stream ended: CorruptContent unless the end-of-archive marker was seen."""
        if self.ended:
            return
        if self.offset == 0:
            raise CorruptContent("tar stream is empty")
        if self._skip or self._part or self._extended is not None:
            raise CorruptContent(f"tar stream is truncated at byte {self.offset}")
        if self._pending():
            raise CorruptContent(f"tar stream is truncated at byte {self.offset}")
        raise CorruptContent(f"tar stream ends at byte {self.offset} without an end-of-archive marker")
