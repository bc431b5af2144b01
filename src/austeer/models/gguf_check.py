"""Check that a ``.gguf`` file is whole before it is converted: a truncated or foreign file is one clear
error naming the file and where it ends, not a ``struct.error`` or a reshape message from deep inside a reader.

The header, every metadata key, every tensor description and the extent of the tensor data are read
(the data itself is not): a file that ends early says where (header, which metadata key, which tensor).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> bad = Path(tempfile.mkdtemp()) / "bad.gguf"
    >>> _ = bad.write_bytes(b"GGUF\\x03\\x00\\x00\\x00")
    >>> try:
    ...     check_gguf(bad)
    ... except ValueError as exc:
    ...     print(str(exc).split(": ", 1)[1].split(";")[0])
    truncated GGUF file: it ends at byte 8, inside the header
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from austeer.errors import UserError

#: GGUF metadata value types -> struct format of a scalar (8: string, 9: array are read apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Ended(Exception):
    """The file ended before ``need`` more bytes could be read."""


class _Reader:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.pos = 0

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.pos += len(data)
        if len(data) < n:
            raise _Ended
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]  # type: ignore[no-any-return]

    def skip(self, n: int) -> None:
        self.fh.seek(n, 1)
        self.pos += n

    def string(self) -> str:
        return self.take(int(self.unpack("Q"))).decode("utf-8", errors="replace")

    def value(self, kind: int) -> int | float | bool | str | None:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = int(self.unpack("I")), int(self.unpack("Q"))
            if item in _SCALARS:  # skipped (checked against the file size below)
                self.skip(count * struct.calcsize(_SCALARS[item]))
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise UserError(f"unknown metadata value type {kind}")


def _tensor_bytes(dims: list[int], qtype: int) -> int | None:
    """Bytes of a tensor of GGML type ``qtype`` (None for a type this ``gguf`` package does not know)."""
    import gguf

    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        return None
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def check_gguf(path: Path) -> None:
    """Raise a one-line ``ValueError`` naming ``path`` when it is not a complete GGUF file (version 2 or 3)."""
    size = path.stat().st_size
    expected = "expected a complete GGUF model file (download or copy it again)"
    where = "the header"
    with path.open("rb") as fh:
        r = _Reader(fh)
        try:
            magic = fh.read(4)
            r.pos = len(magic)
            if magic != b"GGUF" and len(magic) == 4:
                raise UserError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); {expected}")
            if len(magic) < 4:
                raise _Ended
            version = int(r.unpack("I"))
            if version not in (2, 3):
                raise UserError(f"{path}: GGUF version {version}; expected version 2 or 3")
            n_tensors, n_keys = int(r.unpack("Q")), int(r.unpack("Q"))
            alignment = 32
            for i in range(n_keys):
                where = f"metadata key {i + 1} of {n_keys}"
                key = r.string()
                where = f"metadata key {key!r}"
                value = r.value(int(r.unpack("I")))
                if key == "general.alignment" and isinstance(value, int) and value > 0:
                    alignment = value
                if r.pos > size:
                    raise _Ended
            tensors = []
            for i in range(n_tensors):
                where = f"the description of tensor {i + 1} of {n_tensors}"
                name = r.string()
                dims = [int(r.unpack("Q")) for _ in range(int(r.unpack("I")))]
                qtype, offset = int(r.unpack("I")), int(r.unpack("Q"))
                tensors.append((name, dims, qtype, offset))
        except _Ended:
            raise UserError(
                f"{path}: truncated GGUF file: it ends at byte {size}, inside {where}; {expected}"
            ) from None
    start = -(-r.pos // alignment) * alignment
    ends = [(start + offset + (_tensor_bytes(dims, qtype) or 0), name) for name, dims, qtype, offset in tensors]
    end, name = max(ends, default=(start, ""))
    if end > size:
        raise UserError(
            f"{path}: truncated GGUF file: {size} bytes, but its tensor data ends at byte {end} (tensor {name!r}); "
            f"{expected}"
        )
