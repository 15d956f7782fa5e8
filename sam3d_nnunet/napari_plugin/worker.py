"""Model work off the GUI thread, one operation at a time, in order.

``OperationQueue.submit(description, fn, *args, on_result=..., on_error=...)`` queues ``fn(*args)``; operations
run one after the other in napari's worker threads (``napari.qt.threading.create_worker``, superqt's
``FunctionWorker`` on Qt's thread pool), so the window stays responsive while the session preprocesses an image,
encodes a window or resamples a mask, and the (not thread-safe) session is never used by two threads at once.
``on_result`` / ``on_error`` run in the GUI thread. The signals ``started(operation)``,
``finished(operation, seconds)`` (after ``on_result`` / ``on_error``; ``operation.error`` is set if it failed),
``failed(description, error)`` and ``idle()`` drive the widget's status line and progress bar.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Optional, Tuple

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from sam3d_nnunet.napari_plugin.io import keep_triton_out_of_the_gui_process


@dataclass
class Operation:
    description: str
    fn: Callable
    args: Tuple[Any, ...] = ()
    on_result: Optional[Callable[[Any], None]] = None
    on_error: Optional[Callable[[BaseException], None]] = None
    kind: str = ""
    started_at: float = field(default=0.0)
    error: Optional[BaseException] = None


class OperationQueue(QObject):
    """Serial queue of model operations run in worker threads (see the module docstring)."""

    started = Signal(object)
    finished = Signal(object, float)
    failed = Signal(str, object)
    idle = Signal()

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._pending: Deque[Operation] = deque()
        self._current: Optional[Operation] = None
        self._worker = None

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending) + (self._current is not None)

    @property
    def current(self) -> Optional[Operation]:
        return self._current

    def submit(self, description: str, fn: Callable, *args, on_result: Optional[Callable] = None,
               on_error: Optional[Callable] = None, kind: str = "") -> Operation:
        op = Operation(description, fn, args, on_result, on_error, kind)
        self._pending.append(op)
        if self._current is None:
            self._start_next()
        return op

    def clear_pending(self, kind: Optional[str] = None) -> int:
        """Drop queued (not yet running) operations, all or those of one ``kind``; returns how many."""
        before = len(self._pending)
        self._pending = deque(op for op in self._pending if kind is not None and op.kind != kind)
        return before - len(self._pending)

    def pending_operations(self):
        return list(self._pending)

    # ------------------------------------------------------------------ internals
    def _start_next(self) -> None:
        if not self._pending:
            self._current = None
            self._worker = None
            self.idle.emit()
            return
        op = self._pending.popleft()
        self._current = op
        keep_triton_out_of_the_gui_process()  # before the worker may import torch's compiler stack (io.py)
        op.started_at = time.perf_counter()
        worker = create_worker(op.fn, *op.args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda value, op=op: self._on_returned(op, value))
        worker.errored.connect(lambda error, op=op: self._on_errored(op, error))
        worker.finished.connect(lambda op=op: self._on_finished(op))
        self._worker = worker
        self.started.emit(op)
        worker.start()

    def _on_returned(self, op: Operation, value) -> None:
        if op.on_result is not None:
            op.on_result(value)

    def _on_errored(self, op: Operation, error: BaseException) -> None:
        op.error = error
        self.failed.emit(op.description, error)
        if op.on_error is not None:
            op.on_error(error)

    def _on_finished(self, op: Operation) -> None:
        if op is not self._current:  # already handled
            return
        self.finished.emit(op, time.perf_counter() - op.started_at)
        self._start_next()


__all__ = ["Operation", "OperationQueue"]
