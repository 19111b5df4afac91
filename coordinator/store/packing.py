"""Bundles are kept gzip-compressed in the results store (a demo bundle: ~26 MB of JSON -> ~0.6 MB).

The sha256 recorded for a bundle is always that of the signed bytes as received (uncompressed);
reading accepts both forms, so a store written before migration ``0004`` reads as it is.
"""

from __future__ import annotations

import gzip

MAGIC = b"\x1f\x8b"
#: zlib level for what the coordinator compresses (stored bundles, the network CSV's .gz): level 3 is
#: ~3x faster than 6 on these texts (a 35 MB bundle 0.26 -> 0.07 s, a 727 MB network CSV 5.2 -> 1.9 s)
#: for ~30% more bytes (0.76 -> 1.01 MB; 16.7 -> 21.8 MB)
LEVEL = 3


def compress(data: bytes) -> bytes:
    """``data`` gzip-compressed at :data:`LEVEL`, with a fixed mtime (equal inputs, equal bytes)."""
    return gzip.compress(data, compresslevel=LEVEL, mtime=0)


def pack(raw: bytes) -> bytes:
    """The bytes to store: gzip-compressed unless they already are."""
    return raw if raw[:2] == MAGIC else compress(raw)


def unpack(stored: bytes) -> bytes:
    """The signed bundle bytes from either stored form (a bundle's JSON never starts with gzip's magic)."""
    stored = bytes(stored)
    return gzip.decompress(stored) if stored[:2] == MAGIC else stored
