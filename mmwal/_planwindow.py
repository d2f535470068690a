"""The flush plan a store publishes (``Store.plan_window``), and when it is taken back.

A commit's leader reads ``plan_window`` instead of calling ``flush_plan``: one
attribute read in place of a Python call made cold, after the thread slept in
the last flush (it cost a commit about 6 us: docs/BENCHMARKS.md). The window is
only as good as what it was computed from, so the rules:

- Only ``flush_plan`` publishes, through ``_publish_plan``, and only if no
  ``_forget_plan`` came since it began to read (``_plan_changes``, read
  first): a window never outlives a change it did not see.
- ``_forget_plan`` runs at the start of every section no ``flush_plan`` runs
  alongside (only a flush's leader asks it: the leader's own Python flush, and
  the truncations and ``close``, which the log runs alone), and after every
  change that may run alongside one (growth, a chunk let go, the open's
  deferred writes). A leader that read a window just before such a change
  flushed as it would have after calling ``flush_plan`` then: the growth is the
  next flush's.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._syscalls import FlushPlan

__all__ = ["PlanWindow"]


class PlanWindow:
    """A store's ``plan_window``, and the count of changes that guards its publication.

    Mixed into the store itself: the leader reads ``store.plan_window``, one
    attribute, so it cannot be a property or live on another object.
    """

    plan_window: tuple[int, int, FlushPlan] | None

    def _start_plan_window(self) -> None:
        self.plan_window = None
        self._plan_changes = 0
        self._plan_lock = threading.Lock()

    def _forget_plan(self) -> None:
        """Clear ``plan_window``: something ``flush_plan`` reads changed, or will."""
        with self._plan_lock:
            self._plan_changes += 1
            self.plan_window = None

    def _publish_plan(self, changes: int, low: int, high: int, plan: FlushPlan) -> None:
        """Publish ``(low, high, plan)`` unless a change was counted since ``changes``."""
        with self._plan_lock:
            if changes == self._plan_changes:
                self.plan_window = (low, high, plan)
