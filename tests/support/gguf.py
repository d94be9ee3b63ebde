"""Write a copy of a GGUF with one string metadata value added or replaced (e.g. a chat template).

Only the header and metadata are rewritten; the tensor infos and the data are copied unchanged
(tensor offsets are relative to the data section, which is re-aligned).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import BinaryIO

STRING = 8
ARRAY = 9
# Fixed sizes of the scalar value types, by GGUF type id.
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _read(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    return int(struct.unpack(fmt, f.read(size))[0])


def _read_string(f: BinaryIO) -> bytes:
    return f.read(_read(f, "<Q"))


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype == STRING:
        _read_string(f)
    elif vtype == ARRAY:
        item_type = _read(f, "<I")
        count = _read(f, "<Q")
        if item_type in SCALAR_SIZES:
            f.seek(SCALAR_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item_type)
    else:
        f.seek(SCALAR_SIZES[vtype], 1)


def _string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def with_string_metadata(source: Path, target: Path, key: str, value: str) -> Path:
    with source.open("rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"{source} is not a GGUF file")
        version = _read(f, "<I")
        n_tensors = _read(f, "<Q")
        n_kv = _read(f, "<Q")
        kvs: list[bytes] = []
        alignment = 32
        for _ in range(n_kv):
            start = f.tell()
            name = _read_string(f)
            vtype = _read(f, "<I")
            value_start = f.tell()
            _skip_value(f, vtype)
            end = f.tell()
            if name == b"general.alignment":
                f.seek(value_start)
                alignment = _read(f, "<I")
                f.seek(end)
            if name != key.encode():
                f.seek(start)
                kvs.append(f.read(end - start))
        kvs.append(_string(key.encode()) + struct.pack("<I", STRING) + _string(value.encode()))
        infos_start = f.tell()
        for _ in range(n_tensors):
            _read_string(f)
            n_dims = _read(f, "<I")
            f.seek(8 * n_dims + 4 + 8, 1)
        infos_end = f.tell()
        data_start = -(-infos_end // alignment) * alignment
        f.seek(infos_start)
        infos = f.read(infos_end - infos_start)
        header = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs) + infos
        padding = -len(header) % alignment
        with target.open("wb") as out:
            out.write(header + b"\0" * padding)
            f.seek(data_start)
            shutil.copyfileobj(f, out, 1 << 24)
    return target
