"""Run user code (reward functions, tools) with a wall-clock limit.

A reward or tool that hangs must cost one failure, not the run: the call runs in a daemon thread and the
caller stops waiting after ``timeout_s`` seconds (``CallTimeout``). Python cannot kill a thread, so a call
that never returns keeps its thread (daemon: it does not block exit); the run goes on without its result.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch


class CallTimeout(TimeoutError):
    """User code did not return within its time limit."""


def call_with_timeout(fn: Callable[..., Any], timeout_s: float | None, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or ``CallTimeout`` after ``timeout_s`` seconds (None or <= 0: no limit).
    Exceptions raised by ``fn`` propagate unchanged."""
    if not timeout_s or timeout_s <= 0:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}
    grad_enabled = torch.is_grad_enabled()  # thread-local: carry the caller's no_grad into the worker

    def target() -> None:
        try:
            with torch.set_grad_enabled(grad_enabled):
                box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"medlab-timeout-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise CallTimeout(f"{getattr(fn, '__name__', fn)!s} did not return within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")
