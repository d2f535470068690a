"""The public surface: ``__all__``, the error hierarchy and messages, typing marker."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pickle
import re
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import mmwal
from mmwal import (
    CorruptionError,
    FileStore,
    InvalidLSNError,
    RecordTooLargeError,
    Syscalls,
    Wal,
    WalBrokenError,
    WalClosedError,
    WalConfig,
    WalError,
    WalLockedError,
    WalReadOnlyError,
    WalTruncatedError,
)

PACKAGE_DIR = Path(mmwal.__file__).parent


def _is_future_feature(value: object) -> bool:
    # ``from __future__ import annotations`` binds a name in every module that uses it.
    return type(value).__module__ == "__future__"


def public_attributes() -> set[str]:
    return {
        name
        for name, value in vars(mmwal).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not _is_future_feature(value)
    }


def test_all_is_exactly_the_public_names() -> None:
    assert len(mmwal.__all__) == len(set(mmwal.__all__)), "duplicates in __all__"
    missing = [name for name in mmwal.__all__ if not hasattr(mmwal, name)]
    assert missing == []
    assert set(mmwal.__all__) == public_attributes()


def test_all_holds_the_documented_api() -> None:
    documented = {
        "Wal",
        "open",
        "MemStore",
        "FileStore",
        "SegmentStore",
        "Syscalls",
        "Record",
        "WalConfig",
        "RecoveryPolicy",
        "WalError",
        "RecordTooLargeError",
        "CorruptionError",
        "WalClosedError",
        "WalLockedError",
        "WalBrokenError",
        "WalIterator",
        "RecoveryReport",
    }
    assert documented <= set(mmwal.__all__)


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from mmwal import *", namespace)  # noqa: S102 - the point of the test
    namespace.pop("__builtins__")
    assert set(namespace) == set(mmwal.__all__)


def private_modules() -> list[str]:
    return sorted(
        path.stem
        for path in PACKAGE_DIR.glob("_*.py")
        if not (path.stem.startswith("__") and path.stem.endswith("__"))
    )


def test_there_are_private_modules() -> None:
    assert {"_format", "_crc", "_store", "_wal", "_errors", "_config"} <= set(private_modules())


@pytest.mark.parametrize("module_name", private_modules())
def test_private_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(f"mmwal.{module_name}")
    names = getattr(module, "__all__", None)
    assert isinstance(names, list), f"{module_name} has no __all__ list"
    assert len(names) == len(set(names)), f"duplicates in {module_name}.__all__"
    assert all(isinstance(name, str) for name in names)
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names missing attributes"


def test_public_names_come_from_a_private_module_all() -> None:
    """Every name ``mmwal`` exports is exported by the module that defines it."""
    exported = set()
    for module_name in private_modules():
        exported |= set(importlib.import_module(f"mmwal.{module_name}").__all__)
    assert set(mmwal.__all__) - {"open"} <= exported


def test_every_public_name_is_documented() -> None:
    undocumented = [
        name
        for name in mmwal.__all__
        if (inspect.isclass(getattr(mmwal, name)) or inspect.isfunction(getattr(mmwal, name)))
        and not inspect.getdoc(getattr(mmwal, name))
    ]
    assert undocumented == []


def test_version_matches_the_distribution() -> None:
    assert isinstance(mmwal.__version__, str)
    assert mmwal.__version__ == importlib.metadata.version("mmwal")


def test_py_typed_marker_exists() -> None:
    marker = PACKAGE_DIR / "py.typed"
    assert marker.is_file()


# -- errors --------------------------------------------------------------------------------


def error_classes() -> list[type[BaseException]]:
    return [
        value
        for name in mmwal.__all__
        if inspect.isclass(value := getattr(mmwal, name)) and issubclass(value, BaseException)
    ]


def test_error_hierarchy() -> None:
    classes = error_classes()
    assert {c.__name__ for c in classes} >= {
        "WalError",
        "RecordTooLargeError",
        "CorruptionError",
        "WalClosedError",
        "WalLockedError",
        "WalBrokenError",
    }
    for cls in classes:
        assert issubclass(cls, WalError), cls
    assert issubclass(WalError, Exception)
    # Caller mistakes are ValueErrors too; what happened to the log is not.
    assert issubclass(RecordTooLargeError, ValueError)
    assert issubclass(InvalidLSNError, ValueError)
    for cls in (
        CorruptionError,
        WalClosedError,
        WalLockedError,
        WalBrokenError,
        WalReadOnlyError,
        WalTruncatedError,
    ):
        assert not issubclass(cls, ValueError), cls


def sample_errors() -> list[WalError]:
    errors: list[WalError] = [
        WalError("generic"),
        RecordTooLargeError(70, 64),
        CorruptionError(123, "checksum mismatch", path="/some/log", hint="a hint"),
        CorruptionError(0, "short header"),
        WalClosedError(),
        WalClosedError("iterator"),
        WalLockedError("/some/log"),
        WalBrokenError("a flush"),
        WalReadOnlyError("/some/log"),
        InvalidLSNError(7, "lies inside the record at LSN 0", before=0, after=13),
        InvalidLSNError(99, "lies past the end of the log (40)", before=40),
        WalTruncatedError(40, "truncate_before dropped it"),
    ]
    for cls in error_classes():
        if cls not in {type(e) for e in errors}:
            # An error class added later: build it from its signature's simplest args.
            parameters = [
                p
                for p in inspect.signature(cls).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            errors.append(cls(*("/some/log" for _ in parameters)))  # type: ignore[arg-type]
    return errors


@pytest.mark.parametrize("error", sample_errors(), ids=lambda e: type(e).__name__)
def test_error_messages_state_every_fact_the_error_carries(error: WalError) -> None:
    """Each attribute an error carries (offset, path, LSNs, limits) is in its message."""
    facts = [value for value in vars(error).values() if value is not None]
    assert facts or type(error) is WalError
    message = str(error)
    for fact in facts:
        assert str(fact) in message, (fact, message)
    assert type(error).__doc__


def test_invalid_lsn_error_names_the_nearest_valid_lsns() -> None:
    both = InvalidLSNError(7, "lies inside the record at LSN 0", before=0, after=13)
    assert (both.lsn, both.before, both.after) == (7, 0, 13)
    assert str(both) == (
        "LSN 7 lies inside the record at LSN 0 (nearest valid LSNs: before 0, after 13); "
        "nothing was changed"
    )
    assert str(InvalidLSNError(3, "is odd")) == "LSN 3 is odd; nothing was changed"
    assert "(nearest valid LSNs: after 5)" in str(InvalidLSNError(1, "x", after=5))


def test_error_messages_carry_their_facts() -> None:
    too_large = RecordTooLargeError(70, 64)
    assert (too_large.size, too_large.limit) == (70, 64)
    assert "70" in str(too_large)
    assert "64" in str(too_large)
    corrupt = CorruptionError(123, "checksum mismatch", path="/some/log", hint="look here")
    assert (corrupt.offset, corrupt.reason, corrupt.path, corrupt.hint) == (
        123,
        "checksum mismatch",
        "/some/log",
        "look here",
    )
    for fact in ("123", "checksum mismatch", "/some/log", "look here"):
        assert fact in str(corrupt)
    bare = CorruptionError(5, "why")
    assert bare.path is None
    assert bare.hint is None
    locked = WalLockedError("/some/log")
    assert locked.path == "/some/log"
    assert "/some/log" in str(locked)
    assert "a flush" in str(WalBrokenError("a flush"))


@pytest.mark.parametrize(
    "error",
    [
        CorruptionError(123, "checksum mismatch", path="/some/log", hint="a hint"),
        CorruptionError(0, "short header"),
        CorruptionError(1 << 40, "implausible length 4294967295", path="/x"),
    ],
    ids=["full", "bare", "large-offset"],
)
def test_corruption_error_pickles(error: CorruptionError) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(error, protocol=protocol))  # noqa: S301
        assert type(copy) is CorruptionError
        assert (copy.offset, copy.reason, copy.path, copy.hint) == (
            error.offset,
            error.reason,
            error.path,
            error.hint,
        )
        assert str(copy) == str(error)
        assert copy.args == error.args


@pytest.mark.parametrize("error", sample_errors(), ids=lambda e: type(e).__name__)
def test_every_error_pickles(error: WalError) -> None:
    """Errors cross process boundaries (multiprocessing, concurrent.futures) intact."""
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


# -- errors raised for real ----------------------------------------------------------------


class _FailingSync(Syscalls):
    def msync(self, address: int, length: int) -> None:
        raise OSError(5, "injected EIO")

    def fdatasync(self, fd: int) -> None:
        raise OSError(5, "injected EIO")


def test_real_errors_carry_messages_and_facts(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with Wal.open(path, WalConfig(max_record_size=16)) as wal:
        first = wal.append(b"record")
        with pytest.raises(RecordTooLargeError) as too_large:
            wal.append(bytes(17))
        assert (too_large.value.size, too_large.value.limit) == (17, 16)
        second = wal.append(b"second")
        with pytest.raises(InvalidLSNError) as mistake:
            wal.iter_from(first + 1)
        assert (mistake.value.lsn, mistake.value.before, mistake.value.after) == (
            first + 1,
            first,
            second,
        )
        wal.store.write(second + 8, b"S")  # damage the second record's payload
        with pytest.raises(CorruptionError) as corrupt:
            wal.iter_from(second)
        assert corrupt.value.offset == second
        assert "checksum mismatch" in corrupt.value.reason
        assert corrupt.value.path == str(path)
        assert str(path) in str(corrupt.value)
        wal.store.write(second + 8, b"s")
        with pytest.raises(WalLockedError) as locked:
            Wal.open(path)
        assert str(path) in str(locked.value)
    with pytest.raises(WalClosedError) as closed:
        wal.append(b"x")
    assert closed.value.what == "log"
    assert str(closed.value).startswith("the log is closed")


def test_broken_error_has_the_os_error_as_cause(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "log", window_size=1 << 16, syscalls=_FailingSync())
    wal = Wal.with_store(store)
    wal.append(b"will not be durable")
    with pytest.raises(WalBrokenError) as broken:
        wal.sync()
    assert isinstance(broken.value.__cause__, OSError)
    assert broken.value.operation == "a flush"
    assert "a flush failed" in str(broken.value)
    with pytest.raises(WalBrokenError):
        wal.append(b"refused")
    # Closing a broken log releases it without trying to flush again.
    wal.close()
    assert wal.closed


def _mentioned_api(message: str) -> list[str]:
    return re.findall(r"\bmmwal\.([A-Za-z_]\w*)", message)


def test_hints_name_only_existing_api(tmp_path: Path) -> None:
    """A hint that tells the user to call ``mmwal.something()`` must name a real function."""
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"this is not a log at all" * 10)
    gap = tmp_path / "gap"
    with Wal.open_segmented(gap, 64) as wal:
        for _ in range(6):
            wal.append(b"x" * 50)
    (gap / "00000000000000000001.wal").unlink()
    attempts: list[Callable[[], object]] = [
        lambda: Wal.open(foreign),
        lambda: Wal.open_segmented(gap),
    ]
    messages = []
    for attempt in attempts:
        with pytest.raises(WalError) as info:
            attempt()
        messages.append(str(info.value))
    messages += [str(e) for e in sample_errors()]
    mentioned = {name for message in messages for name in _mentioned_api(message)}
    assert "repair" in mentioned, "the gap's hint no longer names the fix"
    assert all(callable(getattr(mmwal, name, None)) for name in mentioned), mentioned
    assert foreign.read_bytes() == b"this is not a log at all" * 10
