"""Reading a stalled loop thread's stack: our frames, the event loop's own frames, the culprit.

Loop-agnostic: frames are told apart by their file names, so nothing here imports an event
loop. A loop thread's stack has three parts, outermost first: whatever started the loop (our
CLI, Hypercorn's worker, `anyio.run`), the loop's machinery (asyncio's runner and
`_run_once`, the selector, anyio's task wrappers, trio's run loop and the `outcome` it resumes
tasks with, uvloop's Python shims),
and the frames of the task or callback being run. A blocking line is found among the last.

When no frame of a task is there, the loop thread is running no Python code of a task: it is
in C code with no Python caller (uvloop's own loop is C: libuv and Cython call callbacks
without a Python frame, and under asyncio a C function scheduled as a callback runs right
above `Handle._run`), or in the selector's wait (epoll, GIL released), or waiting to take the
GIL back on its way out of such a call. `culprit` says so instead of naming the runner's line.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from traceback import FrameSummary
from types import FrameType
from typing import Any

#: Frames whose file lives under this directory are ours, and are marked in stall reports.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
#: Where the event loops' own frames come from (path prefixes and fragments).
_MACHINERY_PREFIXES = (_STDLIB + "asyncio" + os.sep, _STDLIB + "selectors.py")
_MACHINERY_PARTS = tuple(
    os.sep + p.replace("/", os.sep)
    for p in ("anyio/_backends/", "anyio/_core/_eventloop.py", "trio/_core/", "outcome/", "uvloop/")
)


def is_own(filename: str) -> bool:
    """Whether a frame's file belongs to the analytics package."""
    return filename.startswith(PACKAGE_DIR)


def is_loop_machinery(filename: str) -> bool:
    """Whether a frame's file is an event loop's own code (asyncio, the selector, anyio's
    backends, trio's core, uvloop)."""
    return filename.startswith(_MACHINERY_PREFIXES) or any(p in filename for p in _MACHINERY_PARTS)


def task_frames(stack: list[FrameSummary]) -> list[FrameSummary]:
    """The frames of the task or callback being run (innermost last): those inside the loop's
    outermost frame that are not the loop's own. The whole stack when no loop frame is in it
    (a thread that runs no event loop)."""
    entry = next((i for i, f in enumerate(stack) if is_loop_machinery(f.filename)), None)
    if entry is None:
        return stack
    return [f for f in stack[entry:] if not is_loop_machinery(f.filename)]


def where(f: FrameSummary) -> str:
    return f"{f.filename}:{f.lineno} in {f.name}"


def culprit(stack: list[FrameSummary]) -> str:
    """The line a stall is blamed on: among the task's frames, the innermost of ours, else the
    innermost one. A stack with frames but none of a task says where the loop thread is
    instead (see the module docstring)."""
    if not stack:
        return "<stack not captured>"
    frames = task_frames(stack)
    if not frames:
        return f"<no Python frame of a task: C code or the selector, at {where(stack[-1])}>"
    f = ([f for f in frames if is_own(f.filename)] or frames)[-1]
    return where(f)


def stack_signature(stack: list[FrameSummary]) -> str:
    """A short stable id of a stack: equal for stalls at the same lines through the same calls."""
    text = "\n".join(f"{f.filename}:{f.lineno}:{f.name}" for f in stack)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def stack_fields(stack: list[FrameSummary]) -> list[dict[str, Any]]:
    """The stack as JSON-ready dicts, innermost last, with our own frames marked `ours`.
    Reads source lines through `linecache` (file I/O: call it off the loop)."""
    return [
        {
            "file": f.filename,
            "line": f.lineno,
            "func": f.name,
            "code": f.line,
            "ours": is_own(f.filename),
        }
        for f in stack
    ]


def _named(fn: object) -> str:
    """A callable by module and qualified name, without calling its `repr` (which may run
    arbitrary code, or print arguments)."""
    fn = getattr(fn, "func", fn)  # functools.partial
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def running_callback(frame: FrameType | None) -> str | None:
    """Under asyncio, the callable a `Handle._run` frame is running when it is the innermost
    frame (a C function run as a loop callback, such as `time.sleep`), else None. Reads that
    frame's locals: call it only while the loop thread is blocked."""
    if frame is None or frame.f_code.co_name != "_run":
        return None
    if not frame.f_code.co_filename.startswith(_MACHINERY_PREFIXES[0]):
        return None
    try:
        handle = frame.f_locals.get("self")
        callback = getattr(handle, "_callback", None)
        return None if callback is None else _named(callback)
    except Exception:  # a frame changing under us: no name, no harm
        return None
