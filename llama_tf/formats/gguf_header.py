"""A GGUF header walked once before the `gguf` reader sees it: every length and count checked against
the bytes that remain.

The `gguf` package trusts its length fields: an array whose count says 2^62 in a 2 MB file made its
reader walk past the end of the file, building an object per element (80 s and 5 GiB before a memory
cap stopped it). Here each string length, array count and tensor dimension count is compared with what
is left of the file before the walk goes on, in the order GGUF lays them out (version 2 and 3):

    magic "GGUF", version u32, tensor count u64, metadata count u64,
    metadata: key (u64 length + bytes), value type u32, value   (an array: item type u32, count u64, items)
    tensor infos: name, dimension count u32, dimensions u64 each, type u32, data offset u64
"""

from __future__ import annotations

import struct

from llama_tf.formats.base import CheckpointError

__all__ = ["check_gguf_header"]

# Value types: their sizes in bytes (8 and 9, string and array, have their own layouts).
FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
MAX_DIMENSIONS = 8       # GGML_MAX_DIMS is 4
MAX_NESTING = 4


class _Walk:
    def __init__(self, data, path, order: str):
        self.data, self.path, self.order, self.at = data, path, order, 0

    def fail(self, what: str):
        raise CheckpointError(f"{self.path}: not a readable GGUF file: {what} at byte {self.at}")

    def take(self, n: int, what: str) -> int:
        if n < 0 or n > len(self.data) - self.at:
            self.fail(f"{what} ({n:,} bytes) runs past the end of the file ({len(self.data):,} bytes)")
        start, self.at = self.at, self.at + n
        return start

    def number(self, fmt: str, what: str) -> int:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(self.order + fmt, self.data, start)[0]

    def string(self, what: str) -> None:
        self.take(self.number("Q", f"the length of {what}"), what)

    def value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in FIXED_SIZES:
            self.take(FIXED_SIZES[kind], what)
        elif kind == STRING:
            self.string(what)
        elif kind == ARRAY and depth < MAX_NESTING:
            item = self.number("I", f"the item type of {what}")
            count = self.number("Q", f"the length of {what}")
            if item in FIXED_SIZES:
                self.take(count * FIXED_SIZES[item], f"{what}'s {count:,} items")
            elif item in (STRING, ARRAY):
                if count * (8 if item == STRING else 12) > len(self.data) - self.at:   # each at least a length
                    self.fail(f"{what} claims {count:,} items, more than the file can hold")
                for _ in range(count):
                    self.value(item, f"an item of {what}", depth + 1)
            else:
                self.fail(f"{what}: unknown item type {item}")
        else:
            self.fail(f"{what}: unknown value type {kind}" if kind != ARRAY else f"{what}: arrays nested too deeply")


def check_gguf_header(data, path) -> None:
    """Walk the header in `data` (the file's bytes, e.g. a memory map); a CheckpointError names the first
    length or count that the file cannot hold. Files that are not GGUF are left to the reader's message."""
    if len(data) < 24 or bytes(data[:4]) != b"GGUF":
        return
    order = "<" if struct.unpack_from("<I", data, 4)[0] < 0x10000 else ">"     # a big-endian file's version
    walk = _Walk(data, path, order)
    walk.take(8, "the magic and version")
    n_tensors = walk.number("Q", "the tensor count")
    n_metadata = walk.number("Q", "the metadata count")
    for i in range(n_metadata):
        walk.string(f"metadata key {i}")
        walk.value(walk.number("I", f"the type of metadata value {i}"), f"metadata value {i}")
    for i in range(n_tensors):
        walk.string(f"the name of tensor {i}")
        dims = walk.number("I", f"the dimension count of tensor {i}")
        if dims > MAX_DIMENSIONS:
            walk.fail(f"tensor {i} claims {dims:,} dimensions")
        walk.take(8 * dims + 4 + 8, f"the shape, type and offset of tensor {i}")
