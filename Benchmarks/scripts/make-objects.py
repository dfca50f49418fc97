#!/usr/bin/env python3
"""Adds COUNT valid objects to a snap repository, written directly (no snapshot needs them).

    make-objects.py REPO COUNT [SIZE]

Each object is SIZE (default 512) random bytes, stored as docs/FORMAT.md section 4 says: one zstd
frame that declares its content size (libzstd's one-shot ZSTD_compress), named by the SHA-256 of
the content, in objects/XX/. `snap check --read-data` accepts them and `snap prune` deletes them.
A million take about a minute, against hours for a million snapshots: enough to measure what
the size of a repository costs the commands that should not care.
"""
import ctypes
import ctypes.util
import hashlib
import os
import sys

repo, count = sys.argv[1], int(sys.argv[2])
size = int(sys.argv[3]) if len(sys.argv) > 3 else 512
name = ctypes.util.find_library("zstd") or "libzstd.so.1"
zstd = ctypes.CDLL(name)
zstd.ZSTD_compressBound.restype = ctypes.c_size_t
zstd.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
zstd.ZSTD_compress.restype = ctypes.c_size_t
zstd.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
zstd.ZSTD_isError.restype = ctypes.c_uint
zstd.ZSTD_isError.argtypes = [ctypes.c_size_t]

objects = os.path.join(repo, "objects")
if not os.path.isfile(os.path.join(repo, "config")):
    sys.exit(f"{repo} is not a snap repository; create it with `snap init` first")
for prefix in range(256):
    os.makedirs(os.path.join(objects, "%02x" % prefix), mode=0o700, exist_ok=True)
bound = zstd.ZSTD_compressBound(size)
output = ctypes.create_string_buffer(bound)
for index in range(count):
    content = os.urandom(size)
    written = zstd.ZSTD_compress(output, bound, content, size, 1)
    if zstd.ZSTD_isError(written):
        sys.exit("zstd failed")
    digest = hashlib.sha256(content).hexdigest()
    path = os.path.join(objects, digest[:2], digest)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, output.raw[:written])
    os.close(fd)
    if index and index % 100000 == 0:
        print(f"{index} objects", file=sys.stderr)
