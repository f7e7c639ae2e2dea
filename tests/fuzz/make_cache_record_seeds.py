"""Writes the seed corpus of fuzz_cache_record: a few valid cache records (the
format of src/cache_record.cpp) and the same records' bodies alone. Needs
xxhsum (Debian package xxhash) for the header's XXH3-64. From the repository root:

    python3 tests/fuzz/make_cache_record_seeds.py tests/fuzz/corpus/fuzz_cache_record
"""

import struct
import subprocess
import sys
from pathlib import Path

NONE, BOOL, INT, DOUBLE, STRING, TENSOR, TUPLE, LIST, DICT, UNDEFINED = range(10)
UINT8, INT64, HALF, FLOAT32, FLOAT64, BOOL_DTYPE = 0, 4, 5, 6, 7, 11  # c10::ScalarType numbers


def u64(n):
    return struct.pack("<Q", n)


def scalar(tag, fmt, value):
    return bytes([tag]) + struct.pack(fmt, value)


def string(s):
    data = s.encode()
    return bytes([STRING]) + u64(len(data)) + data


def tensor(dtype, shape, data):
    out = bytes([TENSOR]) + struct.pack("<i", dtype) + u64(len(shape))
    out += b"".join(struct.pack("<q", n) for n in shape)
    return out + u64(len(data)) + data


def container(tag, items):
    return bytes([tag]) + u64(len(items) // 2 if tag == DICT else len(items)) + b"".join(items)


def body(namespace, inputs, output, seconds=0.01):
    ns = namespace.encode()
    return struct.pack("<d", seconds) + u64(len(ns)) + ns + u64(len(inputs)) + b"".join(inputs) + output


def record(body_bytes):
    line = subprocess.run(["xxhsum", "-H3", "-"], input=body_bytes, capture_output=True, check=True).stdout.decode()
    checksum = int(line.split()[-1], 16)  # "XXH3 (stdin) = <16 hex digits>"
    return b"PARECR" + struct.pack("<H", 2) + u64(len(body_bytes)) + u64(checksum) + body_bytes


def main(directory):
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    image = tensor(FLOAT32, [2, 3], struct.pack("<6f", *range(6)))
    logits = tensor(FLOAT64, [1, 2], struct.pack("<2d", 0.25, -1.5))
    nested = container(TUPLE, [
        container(DICT, [string("logits"), logits]),
        container(LIST, [tensor(INT64, [1], struct.pack("<q", 7)), tensor(INT64, [2], struct.pack("<2q", 1, 2))]),
        scalar(INT, "<q", 3), scalar(DOUBLE, "<d", 0.5), string("ok"), bytes([NONE]), bytes([BOOL, 1]),
        bytes([UNDEFINED]), tensor(HALF, [2], b"\x00\x3c\x00\x40"),
    ])
    bodies = {
        "tensor": body("3:app0123456789abcdef", [image], logits),
        "nested": body("", [image, scalar(INT, "<q", 4), string("mode")], nested),
        "bool_uint8": body("ns", [tensor(BOOL_DTYPE, [3], b"\x01\x00\x01")], tensor(UINT8, [2, 2], b"\x01\x02\x03\x04")),
        "no_inputs": body("", [], container(TUPLE, [])),
        "int_dict": body("", [container(LIST, [scalar(INT, "<q", i) for i in range(3)])],
                         container(DICT, [scalar(INT, "<q", 1), scalar(DOUBLE, "<d", 2.0)])),
    }
    for name, data in bodies.items():
        (out / name).write_bytes(record(data))
        (out / ("body_" + name)).write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus/fuzz_cache_record")
