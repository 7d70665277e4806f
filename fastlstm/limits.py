"""Bounds that the loaders (``load_model``, ``from_keras``, ``from_onnx``) check against what
a file declares, before they read, inflate or build anything (docs/security.md).

A file a few kilobytes long can declare a multi-gigabyte array (a compressed run of zeros, an
HDF5 dataset's shape, an ONNX shape for ``ConstantOfShape``), a JSON document nested deeper
than Python's recursion limit, or a layer config whose weights would take minutes to
initialise. Each bound below turns such a file into a ``ValueError`` naming the member and
the sizes, before memory or time is spent. They are module attributes: a program that loads
trusted files larger than these may raise them (``fastlstm.limits.MAX_ARRAY_BYTES = ...``).
"""
from __future__ import annotations

import math
import zipfile

import numpy as np

#: Bytes of one array: a weight in a model file, an HDF5 dataset, an ONNX tensor computed
#: while folding constants. An LSTM(8192)'s float32 recurrent kernel takes 1 GiB.
MAX_ARRAY_BYTES = 2 * 2**30
#: Bytes of a JSON document: a model description, a Keras ``config.json`` or
#: ``model_config`` attribute.
MAX_JSON_BYTES = 64 * 2**20
#: Nesting depth of a JSON document or a layer config (a real model's is below 20).
MAX_NESTING = 100
#: Members of a zip archive (a model file holds a few arrays per layer).
MAX_ZIP_MEMBERS = 100_000
#: A compressed zip member above ``RATIO_CHECK_BYTES`` may inflate to at most this many
#: times its compressed size (weights compress by less than 2x; a zip bomb by 1000x).
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 16 * 2**20

_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def array_nbytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` needs, in Python integers (no overflow)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def check_array_size(shape, dtype, where, error=ValueError):
    """Refuse an array of ``shape`` larger than ``MAX_ARRAY_BYTES`` (or with a negative
    dimension) before it is allocated."""
    if any(int(d) < 0 for d in shape):
        raise error(f"{where}: declares shape {tuple(shape)} with a negative dimension")
    nbytes = array_nbytes(shape, dtype)
    if nbytes > MAX_ARRAY_BYTES:
        raise error(f"{where}: declares an array of shape {tuple(shape)} and dtype "
                    f"{np.dtype(dtype)} ({nbytes:,} bytes), more than the limit of "
                    f"{MAX_ARRAY_BYTES:,} bytes (fastlstm.limits.MAX_ARRAY_BYTES)")
    return nbytes


def check_zip_member(info: zipfile.ZipInfo, where, limit, error=ValueError):
    """Refuse a zip member, from its header alone, that declares more than ``limit`` bytes,
    inflates by more than ``MAX_COMPRESSION_RATIO``, or uses a compression that zipfile
    cannot read."""
    if info.compress_type not in _ZIP_METHODS:
        raise error(f"{where}: compressed with zip method {info.compress_type}, which cannot "
                    "be read (stored, deflate, bzip2 and lzma can)")
    if info.file_size > limit:
        raise error(f"{where}: declares {info.file_size:,} bytes uncompressed, more than the "
                    f"limit of {limit:,} bytes (fastlstm.limits)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > RATIO_CHECK_BYTES and \
            info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise error(f"{where}: inflates {info.compress_size:,} compressed bytes to "
                    f"{info.file_size:,}, a ratio above {MAX_COMPRESSION_RATIO} "
                    "(fastlstm.limits.MAX_COMPRESSION_RATIO); refused as a zip bomb")


def check_zip_archive(zf: zipfile.ZipFile, where, error=ValueError):
    """Refuse an archive with more than ``MAX_ZIP_MEMBERS`` members, or a member whose
    declared compressed size runs past the end of the archive (zipfile would allocate a
    buffer of the declared size before finding the data short)."""
    n = len(zf.infolist())
    if n > MAX_ZIP_MEMBERS:
        raise error(f"{where}: holds {n:,} members, more than the limit of "
                    f"{MAX_ZIP_MEMBERS:,} (fastlstm.limits.MAX_ZIP_MEMBERS)")
    if zf.fp is None or not hasattr(zf.fp, "seek"):
        return
    size = zf.fp.seek(0, 2)     # zipfile seeks to each member's own offset before reading it
    for info in zf.infolist():
        if info.header_offset + info.compress_size > size:
            raise error(f"{where}: member {info.filename!r} declares {info.compress_size:,} "
                        f"compressed bytes at offset {info.header_offset:,}, past the end of "
                        f"the {size:,}-byte archive; the archive is damaged")


def check_nesting(obj, where, error=ValueError, limit=None):
    """Refuse a JSON-like value (dicts and lists) nested deeper than ``MAX_NESTING``; walks
    it without recursion, so the check itself cannot overflow the stack."""
    limit = MAX_NESTING if limit is None else limit
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise error(f"{where}: nested deeper than {limit} levels "
                        "(fastlstm.limits.MAX_NESTING)")
        children = value.values() if isinstance(value, dict) else value \
            if isinstance(value, list) else ()
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return obj
