"""The tar dialect of dependency archives: POSIX ustar headers, with pax extended headers
for paths, link targets and sizes that do not fit (node_modules paths often pass 100
bytes). Only what node_modules holds is written or accepted: directories, regular files
and symbolic links. GNU tar and Python's ``tarfile`` read these archives too, so that an
operator can look inside one with ``zstd -dc X.tar.zst | tar -tv``.

Our own codec rather than ``tarfile``: restoring is the hot path of a warm start, and
``tarfile`` spends most of its time on features we refuse anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

BLOCK = 512
END = bytes(2 * BLOCK)  # end-of-archive: two zero blocks
MAX_PAX_BYTES = 1 << 20

DIR, FILE, SYMLINK = "dir", "file", "symlink"
_WRITE_TYPE = {DIR: b"5", FILE: b"0", SYMLINK: b"2"}
_READ_TYPE = {b"5": DIR, b"0": FILE, b"\0": FILE, b"7": FILE, b"2": SYMLINK}
_ZERO = bytes(BLOCK)


class BadArchive(ValueError):
    """The tar stream is malformed or holds something we do not restore."""


@dataclass(frozen=True)
class Member:
    path: bytes  # as stored: "node_modules/a/b", no trailing slash
    kind: str  # DIR | FILE | SYMLINK
    mode: int
    size: int
    mtime: int
    link: bytes = b""


def padding(size: int) -> int:
    return -size % BLOCK


def header(
    path: bytes, kind: str, mode: int, size: int = 0, mtime: int = 0, link: bytes = b""
) -> bytes:
    """The header block(s) of one member; its data (``size`` bytes, padded to a block)
    follows."""
    pax: list[tuple[bytes, bytes]] = []
    if len(path) > 100:
        pax.append((b"path", path))
    if len(link) > 100:
        pax.append((b"linkpath", link))
    if size >= 8**11:
        pax.append((b"size", b"%d" % size))
    out = b""
    if pax:
        payload = b"".join(_pax_record(k, v) for k, v in pax)
        out = _ustar(b"././@PaxHeader", b"x", 0o644, len(payload), mtime, b"")
        out += payload + bytes(padding(len(payload)))
    return out + _ustar(
        path[:100], _WRITE_TYPE[kind], mode, 0 if size >= 8**11 else size, mtime, link[:100]
    )


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d%s" % (length, body)


def _ustar(name: bytes, typeflag: bytes, mode: int, size: int, mtime: int, link: bytes) -> bytes:
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\0" % (mode & 0o7777)
    block[108:124] = b"0000000\x000000000\0"  # uid, gid: the restorer decides
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % min(max(mtime, 0), 8**11 - 1)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157 : 157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


class Source:
    """Exact reads over an iterator of byte chunks (a decompressing stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self.consumed = 0

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer = memoryview(chunk)
                return True
        return False

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes; BadArchive when the stream ends first."""
        if len(self._buffer) >= size:
            out = bytes(self._buffer[:size])
            self._buffer = self._buffer[size:]
            self.consumed += size
            return out
        return b"".join(self.pieces(size))

    def view(self, size: int) -> bytes | memoryview:
        """Like ``read``, without a copy when the bytes lie in one chunk: a view that
        keeps that chunk alive."""
        if len(self._buffer) >= size:
            out = self._buffer[:size]
            self._buffer = self._buffer[size:]
            self.consumed += size
            return out
        return b"".join(self.pieces(size))

    def pieces(self, size: int) -> Iterator[memoryview]:
        """The next ``size`` bytes as views into the stream's chunks (no copies)."""
        while size:
            if not self._buffer and not self._fill():
                raise BadArchive("the archive ends in the middle of a member")
            piece = self._buffer[:size]
            self._buffer = self._buffer[len(piece) :]
            size -= len(piece)
            self.consumed += len(piece)
            yield piece

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass

    def at_end(self) -> bool:
        """True when nothing but zero bytes is left (drains the stream)."""
        while True:
            if any(self._buffer):
                return False
            if not self._fill():
                return True


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (GNU), for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise BadArchive(f"bad number field {field!r}") from None


def _parse_pax(payload: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise BadArchive("bad pax header") from None
        record = payload[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise BadArchive("bad pax record")
        key, value = record[:-1].split(b"=", 1)
        records[key] = value
        pos += length
    return records


def next_member(source: Source) -> Member | None:
    """The next member's header (its data is left in ``source``), or None at the end of
    the archive. Pax ('x') and GNU long-name ('L', 'K') headers are applied, global pax
    headers, hard links, devices and FIFOs refused."""
    overrides: dict[bytes, bytes] = {}
    while True:
        block = source.read(BLOCK)
        if block == _ZERO:
            if source.read(BLOCK) != _ZERO:
                raise BadArchive("a zero block in the middle of the archive")
            return None
        stored = _number(block[148:156])
        if stored != sum(block[:148]) + 256 + sum(block[156:]):
            raise BadArchive("header checksum mismatch")
        typeflag = block[156:157]
        size = _number(block[124:136])
        if typeflag in (b"x", b"L", b"K"):
            if size > MAX_PAX_BYTES:
                raise BadArchive("extended header too large")
            payload = source.read(size)
            source.skip(padding(size))
            if typeflag == b"x":
                overrides.update(_parse_pax(payload))
            else:
                overrides[b"path" if typeflag == b"L" else b"linkpath"] = payload.rstrip(b"\0")
            continue
        kind = _READ_TYPE.get(typeflag)
        if kind is None:
            raise BadArchive(
                f"entry type {typeflag!r} is not restored (only dirs, files, symlinks)"
            )
        name = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
        path = overrides.get(b"path") or (prefix + b"/" + name if prefix else name)
        link = overrides.get(b"linkpath") or block[157:257].split(b"\0", 1)[0]
        if b"size" in overrides:
            size = int(overrides[b"size"])
        if kind != FILE and size:
            raise BadArchive(f"{kind} {path!r} carries data")
        return Member(
            path=path.rstrip(b"/"),
            kind=kind,
            mode=_number(block[100:108]) & 0o7777,
            size=size,
            mtime=int(float(overrides.get(b"mtime", b"0"))) or _number(block[136:148]),
            link=link if kind == SYMLINK else b"",
        )
