"""TarScan (the push-fed tar check of a layer arriving from a registry) must accept and
refuse exactly what TarReader does, whatever the pieces the stream arrives in."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.store.errors import CorruptContent
from lamina.store.tarformat import TarReader
from lamina.store.tarscan import TarScan


def _reader_verdict(data: bytes) -> str:
    try:
        reader = TarReader(io.BytesIO(data))
        while reader.next() is not None:
            pass
        return "ok"
    except CorruptContent:
        return "corrupt"


def _scan_verdict(data: bytes, cuts: list[int]) -> str:
    scan = TarScan()
    try:
        prev = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            scan.feed(data[prev:cut])
            prev = cut
        scan.finish()
        return "ok"
    except CorruptContent:
        return "corrupt"


def _archive(members: list[tuple[str, bytes, str]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "t/" * 60 + name
                tf.addfile(info)
            else:
                info.size = len(data)
                if kind == "xattr" and fmt == tarfile.PAX_FORMAT:
                    info.pax_headers = {"SCHILY.xattr.user.k": "v" * 30, "mtime": "1.5"}
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


names = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=130)
members = st.lists(st.tuples(names, st.binary(max_size=1500),
                             st.sampled_from(["file", "dir", "link", "xattr"])),
                   min_size=0, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members, st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
       st.lists(st.integers(min_value=0), max_size=8),
       st.one_of(st.none(), st.integers(min_value=0)),       # truncate here
       st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                max_size=3))                                  # set these bytes
def test_scan_agrees_with_reader(ms, fmt, cuts, truncate, flips):
    try:
        data = _archive(ms, fmt)
    except ValueError:  # a name USTAR cannot hold
        return
    data = bytearray(data)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    if truncate is not None:
        data = data[:truncate % (len(data) + 1)]
    data = bytes(data)
    assert _scan_verdict(data, cuts) == _reader_verdict(data)


@pytest.mark.parametrize("data, verdict", [
    (b"", "corrupt"),                                     # empty
    (bytes(512), "ok"),                                   # only the end marker
    (bytes(100), "corrupt"),                              # a partial block
])
def test_edges(data, verdict):
    assert _reader_verdict(data) == verdict
    assert _scan_verdict(data, [1, 7, 300]) == verdict


def test_truncated_member_data_and_pax_size_are_refused():
    good = _archive([("a", b"x" * 3000, "file"), ("b" * 120, b"y", "xattr")], tarfile.PAX_FORMAT)
    assert _scan_verdict(good, [513]) == "ok"
    cut = good[:1024 + 1000]
    assert _scan_verdict(cut, []) == _reader_verdict(cut) == "corrupt"


@pytest.mark.parametrize("key", ["mtime", "size", "uid"])
def test_a_huge_pax_number_is_corrupt_content_not_a_crash(key):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.pax_headers = {key: "9" * 5000}
        tf.addfile(info, io.BytesIO(b""))
    data = buf.getvalue()
    assert _reader_verdict(data) == "corrupt"
    assert _scan_verdict(data, [700]) == "corrupt"


FIELDS = {"mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "mtime": (136, 12),
          "devmajor": (329, 8), "devminor": (337, 8)}


def _with_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FIELDS)),
       st.lists(st.sampled_from(list(b"0123457 \0+-_o9x\t") + [0x80, 0xFF]), min_size=1, max_size=12),
       st.sampled_from([b"0", b"\0", b"1", b"2", b"3", b"5", b"6", b"7", b"Z", b"S"]),
       st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]))
def test_number_fields_and_types_get_the_readers_verdict(field, value, typeflag, fmt):
    """Member headers with re-checksummed odd number fields and types: the scan's quick
    path for plain members must never accept what the reader refuses, nor refuse what
    it accepts."""
    data = bytearray(_archive([("dir/", b"", "dir"), ("f", b"x" * 700, "file")], fmt))
    header = data[512:1024]  # the file's header
    start, width = FIELDS[field]
    header[start:start + width] = bytes(value[:width]).ljust(width, b"\0")
    header[156:157] = typeflag
    _with_checksum(header)
    data[512:1024] = header
    data = bytes(data)
    assert _scan_verdict(data, [700, 1500]) == _reader_verdict(data)


def test_old_regular_type_with_a_trailing_slash_is_a_directory_without_data():
    """A '\\0'-typed member named 'd/' is a directory (tarfile, GNU tar): its size field
    brings no data, so what follows is read as the next header - the scan agrees."""
    data = bytearray(_archive([("d/", b"x" * 700, "file")], tarfile.USTAR_FORMAT))
    header = data[:512]
    header[156:157] = b"\0"
    _with_checksum(header)
    data[:512] = header
    assert _reader_verdict(bytes(data)) == "corrupt"
    assert _scan_verdict(bytes(data), [100]) == "corrupt"
