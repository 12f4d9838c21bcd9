"""Identifier-space arithmetic for the Chord ring.

Owns the 2^m circle: hashing addresses, keys and virtual nodes onto it, clockwise distance, the
open and half-open interval tests Chord is built on, and finger start points.
Pure: no I/O, no time, no randomness.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import describe

DEFAULT_BITS = 256
_HASH_BITS = 256
_HEX = re.compile(r"(0x)?[0-9a-fA-F]+")


def in_open(x: int, a: int, b: int) -> bool:
    """True when x lies strictly inside the clockwise arc (a, b).

    When a == b the arc is the whole circle except a itself.
    """
    if a < b:
        return a < x < b
    if a > b:
        return x > a or x < b
    return x != a


def in_half_open(x: int, a: int, b: int) -> bool:
    """True when x lies in the clockwise arc (a, b]; when a == b that is the whole circle."""
    if a < b:
        return a < x <= b
    if a > b:
        return x > a or x <= b
    return True


@dataclass(frozen=True, slots=True)
class IdSpace:
    """A circle of 2^bits identifiers, 1 <= bits <= 256."""

    bits: int = DEFAULT_BITS

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= _HASH_BITS:
            raise ValueError(f"identifier bits must be an integer in 1..{_HASH_BITS}, got {self.bits!r}")

    @property
    def size(self) -> int:
        return 1 << self.bits

    def hash(self, data: bytes) -> int:
        """SHA-256 of data, truncated to the top `bits` bits."""
        digest = int.from_bytes(hashlib.sha256(data).digest(), "big")
        return digest >> (_HASH_BITS - self.bits)

    def node_id(self, address: str) -> int:
        """The default ID of a node advertising host:port."""
        return self.hash(address.encode("utf-8"))

    def vnode_id(self, base_id: int, index: int) -> int:
        """The ID of a process's virtual node `index`, derived from the ID of its
        first position (which its certificate binds), so no process chooses
        where its other positions sit either. Index 0 is the base ID itself."""
        if index == 0:
            return base_id
        return self.hash(b"chordcdn vnode %d %d" % (base_id, index))

    def distance(self, a: int, b: int) -> int:
        """Clockwise distance from a to b."""
        return (b - a) % self.size

    def position(self, digest: bytes) -> int:
        """Ring position of a 32-byte SHA-256 digest (a block key): its top `bits` bits."""
        return int.from_bytes(digest, "big") >> (_HASH_BITS - self.bits)

    def split_arc(self, lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
        """Cut the clockwise arc (lo, hi] into `parts` consecutive arcs (a, b] of
        nearly equal length (fewer when the arc holds fewer than `parts` IDs, so no
        part is empty); when lo == hi the arc is the whole circle."""
        length = self.distance(lo, hi) or self.size
        parts = max(1, min(parts, length))
        cuts = [(lo + length * index // parts) % self.size for index in range(parts + 1)]
        return [(cuts[index], cuts[index + 1]) for index in range(parts)]

    def finger_start(self, node_id: int, index: int) -> int:
        """Start of finger `index` (0-based): node_id + 2^index on the circle."""
        if not 0 <= index < self.bits:
            raise ValueError(f"finger index {index} outside 0..{self.bits - 1}")
        return (node_id + (1 << index)) % self.size

    def check(self, ident: int) -> int:
        """Return ident if it is a valid identifier, else raise ValueError."""
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident < self.size:
            raise ValueError(f"identifier {describe(ident)} is not an integer in [0, 2^{self.bits})")
        return ident

    def parse_id(self, text: str) -> int:
        """Parse a hex identifier ("0x…" or bare hex digits) and range-check it."""
        if not _HEX.fullmatch(text):
            raise ValueError(f"{describe(text)} is not a hexadecimal identifier")
        return self.check(int(text, 16))

    def key_for(self, text: str) -> int:
        """Interpret a user-supplied key. "0x" followed by hex digits is an ID (and
        must be in range); so is a full-width run of hex digits that fits the space.
        Any other text is hashed."""
        if text.startswith("0x") and _HEX.fullmatch(text):
            return self.parse_id(text)
        if len(text) == (self.bits + 3) // 4 and _HEX.fullmatch(text) and int(text, 16) < self.size:
            return int(text, 16)
        return self.hash(text.encode("utf-8"))

    def short(self, ident: int) -> str:
        """A short hex rendering of an ID for humans (first 8 hex digits at full width)."""
        width = (self.bits + 3) // 4
        return format(ident, f"0{width}x")[:8]
