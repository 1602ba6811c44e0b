"""Serial-number arithmetic for RTP sequence numbers (16 bits) and timestamps (32 bits).

Both wrap around: 65535 + 1 is 0, and "newer" means "less than half the number space ahead"
(RFC 1982). Every comparison of sequence numbers in rtcore goes through here.
"""

from __future__ import annotations

UINT16_MOD = 1 << 16
UINT16_HALF = 1 << 15
UINT32_MOD = 1 << 32
UINT32_HALF = 1 << 31


def uint16_add(a: int, b: int) -> int:
    """a + b modulo 2^16 (b may be negative)."""
    return (a + b) & 0xFFFF


def uint16_diff(a: int, b: int) -> int:
    """Signed distance from b to a, in [-32768, 32767]: 1 for (0, 65535), -1 for (65535, 0)."""
    d = (a - b) & 0xFFFF
    return d - UINT16_MOD if d >= UINT16_HALF else d


def uint16_gt(a: int, b: int) -> bool:
    """True if a is newer than b."""
    return 0 < ((a - b) & 0xFFFF) < UINT16_HALF


def uint16_gte(a: int, b: int) -> bool:
    """True if a is b or newer."""
    return a == b or uint16_gt(a, b)


def uint32_add(a: int, b: int) -> int:
    """a + b modulo 2^32 (b may be negative)."""
    return (a + b) & 0xFFFFFFFF


def uint32_diff(a: int, b: int) -> int:
    """Signed distance from b to a, in [-2^31, 2^31 - 1]."""
    d = (a - b) & 0xFFFFFFFF
    return d - UINT32_MOD if d >= UINT32_HALF else d
