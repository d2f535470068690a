"""The slow set: tests that take seconds each, run with ``pytest -m slow`` (``.ci/run`` does).

They are marked here, by name, rather than in their files, so that the fast set
(``pytest -q``, the README's command) stays short. Measured with
``pytest --durations=30``; every test listed took 4 s or more on 2 shared cores.
"""

from __future__ import annotations

import pytest

# (file, test name or its prefix before a parameter list)
SLOW = {
    ("test_kills.py", "test_quick_kills_keep_every_appended_record"),
    ("test_crash_simulation.py", "test_quick_crash_images_keep_the_prefix_property"),
    ("test_crash_simulation.py", "test_unordered_metadata_crash_images_keep_the_prefix_property"),
    ("test_perf_smoke.py", "test_quick_bench_writes_complete_json"),
    ("test_fuzz.py", "test_segment_sets_recover_or_refuse"),
    ("test_fuzz.py", "test_single_files_recover_or_refuse"),
    ("test_fuzz.py", "test_the_atheris_entry_point_holds"),
    ("test_stateful.py", "TestCrashingLog"),
    ("test_bounded_resources.py", "test_a_log_of_many_segments_under_256_descriptors"),
    ("test_follow_model.py", "test_followers_against_a_model"),
    ("test_follow.py", "test_read_only_opens_racing_a_truncating_writer_never_fail"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Add the ``slow`` marker to the tests listed in ``SLOW``.

    An entry whose file was collected but which names nothing defined there is an
    error: a renamed test would otherwise drop out of the slow set silently and
    run in the fast one (or, deselected by a marker expression, nowhere). Judged
    by the module, not by what was collected, so running some tests of a file by
    their ids (as mutation testing does) is no error.
    """
    matched: set[tuple[str, str]] = set()
    modules: dict[str, object] = {}
    for item in items:
        modules[item.path.name] = getattr(item, "module", None)
        name = item.name.split("[")[0]
        owner = item.parent.name if item.parent is not None else ""
        for entry in ((item.path.name, name), (item.path.name, owner)):
            if entry in SLOW:
                matched.add(entry)
                item.add_marker(pytest.mark.slow)
                break
    stale = sorted(
        entry
        for entry in SLOW - matched
        if entry[0] in modules and not hasattr(modules[entry[0]], entry[1])
    )
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")
