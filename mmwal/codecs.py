"""Codecs: turn values into record bytes and back, for ``Wal.typed``.

A codec is any object with ``encode(value) -> bytes`` and ``decode(bytes) -> value``.
The bytes a codec returns are the record's payload exactly, so an untyped reader
(``Wal.iter``, wal-db, ``python -m mmwal dump``) sees the same bytes.

Rules every codec here keeps:

- ``encode`` rejects a value it cannot represent with ``TypeError`` (wrong kind of
  value) or ``ValueError`` (right kind, unrepresentable: NaN in JSON, an int out of
  range), never with a library-specific exception, so ``TypedWal`` can promise
  that a rejected value wrote nothing.
- ``decode`` raises ``ValueError`` for bytes it cannot read.
"""

from __future__ import annotations

import importlib
import json
import pickle
import struct
from typing import Any, Protocol, TypeVar

__all__ = ["Codec", "Json", "MsgPack", "Pickle", "Struct"]

T = TypeVar("T")


class Codec(Protocol[T]):
    """Encode a value as a record's payload and decode it back."""

    def encode(self, value: T, /) -> bytes:
        """Return the payload for ``value``; raise ``TypeError``/``ValueError`` to reject it."""
        ...

    def decode(self, data: bytes, /) -> T:
        """Return the value a payload holds; raise ``ValueError`` for bytes it cannot read."""
        ...


class Json:
    """JSON values as compact UTF-8 text: readable with any JSON tool.

    NaN and infinities are rejected (``ValueError``): they are not JSON, and other
    readers of the log would refuse them. ``sort_keys=True`` makes equal dicts
    encode to equal bytes.
    """

    def __init__(self, *, sort_keys: bool = False) -> None:
        """Make a JSON codec; ``sort_keys`` orders the keys of every object."""
        self._sort_keys = sort_keys

    def encode(self, value: Any, /) -> bytes:
        """Return ``value`` as compact JSON in UTF-8."""
        text = json.dumps(
            value,
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
            sort_keys=self._sort_keys,
        )
        return text.encode()

    def decode(self, data: bytes, /) -> Any:
        """Return the JSON value ``data`` holds."""
        try:
            return json.loads(data)
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 JSON: {error}") from error

    def __repr__(self) -> str:
        return f"Json(sort_keys={self._sort_keys})"


class Struct:
    """Tuples of fixed-size fields, laid out by a ``struct`` format (e.g. ``"<qd"``).

    The smallest and fastest encoding for fixed records. A value of the wrong
    shape or out of a field's range is a ``ValueError`` (``TypeError`` when it is
    not a tuple or list).
    """

    def __init__(self, fmt: str) -> None:
        """Make a codec for the ``struct`` format ``fmt``."""
        try:
            self._struct = struct.Struct(fmt)
        except struct.error as error:
            raise ValueError(f"bad struct format {fmt!r}: {error}") from error

    @property
    def size(self) -> int:
        """The length of every payload this codec writes."""
        return self._struct.size

    def encode(self, value: tuple[Any, ...], /) -> bytes:
        """Pack the fields of ``value``."""
        if not isinstance(value, tuple | list):
            raise TypeError(
                f"Struct({self._struct.format!r}) encodes a tuple, not {type(value).__name__}"
            )
        try:
            return self._struct.pack(*value)
        except struct.error as error:
            message = f"cannot pack {value!r} as {self._struct.format!r}: {error}"
            raise ValueError(message) from error

    def decode(self, data: bytes, /) -> tuple[Any, ...]:
        """Unpack ``data`` into a tuple."""
        try:
            return self._struct.unpack(data)
        except struct.error as error:
            raise ValueError(f"cannot unpack as {self._struct.format!r}: {error}") from error

    def __repr__(self) -> str:
        return f"Struct({self._struct.format!r})"


class MsgPack:
    """MessagePack: compact, typed (bytes stay bytes), readable from many languages.

    Needs the optional dependency: ``pip install 'mmwal[msgpack]'``.
    """

    def __init__(self) -> None:
        """Make a MessagePack codec; ``ImportError`` says what to install when it is missing."""
        try:
            self._msgpack: Any = importlib.import_module("msgpack")
        except ImportError as error:
            raise ImportError(
                "MsgPack() needs the msgpack package (hint: pip install 'mmwal[msgpack]')"
            ) from error

    def encode(self, value: Any, /) -> bytes:
        """Return ``value`` packed; bytes and str stay distinct."""
        try:
            packed: bytes = self._msgpack.packb(value, use_bin_type=True)
        except OverflowError as error:
            raise ValueError(f"cannot pack {value!r} as MessagePack: {error}") from error
        return packed

    def decode(self, data: bytes, /) -> Any:
        """Return the value ``data`` holds."""
        msgpack = self._msgpack
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (msgpack.UnpackException, msgpack.ExtraData, UnicodeDecodeError) as error:
            raise ValueError(f"not MessagePack: {error}") from error

    def __repr__(self) -> str:
        return "MsgPack()"


class Pickle:
    """Any picklable Python object. UNSAFE for logs you did not write yourself.

    Decoding a pickle runs code the bytes name: a log that anyone else could have
    written (copied from another machine, restored from a shared archive) can run
    arbitrary code in the reader. Use it only for logs only your own process
    writes, and prefer ``Json``, ``MsgPack`` or ``Struct`` for anything else.
    Pickles also tie the log to your class names: renaming a class breaks replay.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        """Make a pickle codec writing ``protocol``; read the class docstring first."""
        self._protocol = protocol

    def encode(self, value: Any, /) -> bytes:
        """Return ``value`` pickled; an unpicklable value is a ``TypeError``."""
        try:
            return pickle.dumps(value, protocol=self._protocol)
        except (pickle.PicklingError, AttributeError) as error:
            raise TypeError(f"cannot pickle {type(value).__name__}: {error}") from error

    def decode(self, data: bytes, /) -> Any:
        """Unpickle ``data``: runs whatever code the bytes name (see the class docstring)."""
        try:
            return pickle.loads(data)  # noqa: S301 - opt-in, documented as unsafe
        except (pickle.UnpicklingError, EOFError) as error:
            raise ValueError(f"not a pickle: {error}") from error

    def __repr__(self) -> str:
        return f"Pickle(protocol={self._protocol})"
