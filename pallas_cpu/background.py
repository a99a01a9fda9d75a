"""The thread that builds kernels while the caller goes on.

Two kinds of builds run here, one at a time, in the order asked:

  * a kernel's first build, started when JAX lowers the pallas_call: XLA
    compiles the HLO around the custom call (which needs only the kernel's
    id) meanwhile (registration.compile_in_background);
  * a small kernel's -O3 build, asked for by the runtime once the kernel's
    -O0 calls have taken long enough (tier-up: lowering/cost.py,
    runtime/kernel_registry.h); the runtime swaps it in when it is ready.

One thread per process (a forked child starts its own).
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Callable

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_pid: int | None = None
_lock = threading.Lock()


def _get() -> concurrent.futures.ThreadPoolExecutor:
  global _executor, _pid
  with _lock:
    if _executor is None or _pid != os.getpid():
      _executor = concurrent.futures.ThreadPoolExecutor(
          max_workers=1, thread_name_prefix="pallas_cpu-compile")
      _pid = os.getpid()
    return _executor


def submit(fn: Callable[[], object]) -> None:
  """Runs ``fn`` on the build thread, after the builds already asked for;
  drops it once the interpreter is shutting down and the thread is gone (a
  kernel lowered in an atexit hook: the runtime's compile hook then builds
  it when it runs; a tier-up asked for then is not made)."""
  try:
    _get().submit(fn)
  except RuntimeError:  # "cannot schedule new futures after shutdown"
    pass


def wait(timeout: float | None = None) -> None:
  """Returns once every build asked for so far has finished (tests and
  benchmarks that want a kernel's tiered-up code)."""
  try:
    done = _get().submit(lambda: None)
  except RuntimeError:  # shutting down: nothing runs any more
    return
  done.result(timeout)
