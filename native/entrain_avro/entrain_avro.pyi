"""Avro binary encoding along a plan (kit.serde._plan builds it from a parsed schema)."""

from typing import Any

class Encoder:
    def __init__(self, plan: tuple[Any, ...]) -> None: ...
    def encode(self, value: Any, prefix: bytes = b"") -> bytes:
        """The Avro binary encoding of ``value`` after ``prefix``; ValueError names a field
        that does not fit and what it expected."""
