"""Helpers for tests and benchmarks of Pallas kernels: which backend a kernel
runs on, and how two results are compared.

Backends are named as in ``pallas_cpu.pallas_call(..., backend=...)``:
"cpu" (compiled to native code), "interpret" (JAX's ``interpret=True``) and
"tpu-interpret" (TPU interpret mode).  A kernel that is not yours to build
-- a library function calling ``pl.pallas_call`` without a way to pass
``interpret=`` -- moves to a backend with :func:`backend_mode` around its
tracing, or :func:`on_backend` around the function.

Comparisons take arrays or pytrees of arrays, and first require the same
tree, shapes and dtypes:

  :func:`assert_same`   bit for bit (signed zeros told apart), any NaN
                        matching any NaN unless ``nan_payloads=True``
  :func:`assert_close`  values within ``rtol``/``atol``

Example::

  from pallas_cpu import testing

  def add(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] + y_ref[...]

  x = y = jnp.ones((8, 128), jnp.float32)
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  got = jax.jit(pallas_cpu.pallas_call(add, out, backend="cpu"))(x, y)
  want = jax.jit(pallas_cpu.pallas_call(add, out, backend="interpret"))(x, y)
  testing.assert_same(got, want)
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import config as jax_config
from jax.experimental.pallas import tpu as pltpu

from pallas_cpu.api import BACKENDS, force_cpu_backend

__all__ = ["BACKENDS", "interpret_mode", "backend_mode", "on_backend",
           "assert_same", "assert_close"]


@contextlib.contextmanager
def interpret_mode() -> Iterator[None]:
  """JAX's ``interpret=True`` for every ``pl.pallas_call`` traced inside.

  The counterpart of ``pltpu.force_tpu_interpret_mode()`` and
  ``pallas_cpu.force_cpu_backend()``: it sets the same interpret-mode
  setting (part of the jit cache key), with the value ``True``.

  Example::

    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import pallas as pl
    >>> from pallas_cpu import testing
    >>> def double(x_ref, o_ref):
    ...   o_ref[...] = x_ref[...] * 2
    >>> x = jnp.arange(4.0)
    >>> with testing.interpret_mode():
    ...   out = jax.jit(pl.pallas_call(double, out_shape=x))(x)
    >>> out.tolist()
    [0.0, 2.0, 4.0, 6.0]
  """
  state = jax_config.pallas_tpu_interpret_mode_context_manager
  prev = state.swap_local(True)
  try:
    yield
  finally:
    state.set_local(prev)


def backend_mode(backend: str) -> contextlib.AbstractContextManager:
  """The context that runs every ``pl.pallas_call`` traced inside on
  ``backend`` ("cpu", "interpret" or "tpu-interpret"), whatever its own
  ``interpret=`` says.  The setting is read while tracing: enter it inside
  the jitted function, or around the first call (see :func:`on_backend`).

  Example::

    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import pallas as pl
    >>> from pallas_cpu import testing
    >>> def negate(x_ref, o_ref):
    ...   o_ref[...] = -x_ref[...]
    >>> x = jnp.arange(3.0)
    >>> with testing.backend_mode("cpu"):
    ...   out = jax.jit(pl.pallas_call(negate, out_shape=x))(x)
    >>> out.tolist()
    [-0.0, -1.0, -2.0]
  """
  if backend == "cpu":
    return force_cpu_backend()
  if backend == "interpret":
    return interpret_mode()
  if backend == "tpu-interpret":
    return pltpu.force_tpu_interpret_mode()
  raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def on_backend(fn: Callable, backend: str) -> Callable:
  """``fn`` with every ``pl.pallas_call`` it traces moved to ``backend``:
  the mode is entered inside, so it holds whenever ``jax.jit`` of the
  result traces ``fn``.

  Example::

    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import pallas as pl
    >>> from pallas_cpu import testing
    >>> def library_fn(x):           # someone else's kernel: no interpret=
    ...   def kernel(x_ref, o_ref):
    ...     o_ref[...] = x_ref[...] + 1
    ...   return pl.pallas_call(kernel, out_shape=x)(x)
    >>> x = jnp.zeros(4)
    >>> got = jax.jit(testing.on_backend(library_fn, "cpu"))(x)
    >>> want = jax.jit(testing.on_backend(library_fn, "interpret"))(x)
    >>> testing.assert_same(got, want)
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with backend_mode(backend):
      return fn(*args, **kwargs)
  return wrapped


def _leaf_pairs(actual: Any, expected: Any, err_msg: str):
  """The leaves of both trees as numpy arrays, after checking that the
  trees, shapes and dtypes agree."""
  a_leaves, a_tree = jax.tree.flatten(actual)
  e_leaves, e_tree = jax.tree.flatten(expected)
  if len(a_leaves) != len(e_leaves):
    raise AssertionError(f"{err_msg}\n{len(a_leaves)} arrays ({a_tree}), "
                         f"expected {len(e_leaves)} ({e_tree})".lstrip())
  for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
    a, e = np.asarray(a), np.asarray(e)
    if a.shape != e.shape or a.dtype != e.dtype:
      where = f"leaf {i}: " if len(a_leaves) > 1 else ""
      raise AssertionError(f"{err_msg}\n{where}got {a.dtype}{list(a.shape)}, "
                           f"expected {e.dtype}{list(e.shape)}".lstrip())
    yield a, e


def _is_float(dtype) -> bool:
  # jnp's test: numpy does not count bfloat16 and the float8s as floating.
  return jnp.issubdtype(dtype, jnp.floating)


def assert_same(actual: Any, expected: Any, *, nan_payloads: bool = False,
                err_msg: str = "") -> None:
  """Equal trees, shapes, dtypes and values, bit for bit: ``-0.0`` is not
  ``0.0``; a NaN matches any NaN, or, with ``nan_payloads=True``, only a NaN
  of the same bits (sign and payload).

  Example::

    >>> import numpy as np
    >>> from pallas_cpu import testing
    >>> testing.assert_same(np.float32([1, np.nan]), np.float32([1, -np.nan]))
    >>> testing.assert_same(np.float32([0.0]), np.float32([-0.0]))
    Traceback (most recent call last):
    AssertionError: 1 of 1 elements differ only in their bits (signs of zeros): first at index (0,): 0x00000000, expected 0x80000000
  """
  # Casting a signalling NaN warns; it is a value like any other here.
  with np.errstate(invalid="ignore"):
    for a, e in _leaf_pairs(actual, expected, err_msg):
      if not _is_float(a.dtype):
        np.testing.assert_array_equal(a, e, err_msg=err_msg)
        continue
      # Values first, for a readable message: widening to f64 is exact, and
      # numpy takes NaN for NaN there.
      np.testing.assert_array_equal(a.astype(np.float64),
                                    e.astype(np.float64), err_msg=err_msg)
      # What equal values still leave apart: signed zeros, NaN bits.
      uint = np.dtype(f"uint{8 * a.dtype.itemsize}")
      a_bits, e_bits = a.view(uint), e.view(uint)
      differ = a_bits != e_bits
      if not nan_payloads:
        differ &= ~np.isnan(a)
      if differ.any():
        idx = tuple(int(i) for i in np.argwhere(differ)[0])
        width = 2 * a.dtype.itemsize
        what = "signs of zeros" + (", NaN bits" if nan_payloads else "")
        raise AssertionError(
            f"{err_msg + chr(10) if err_msg else ''}{int(differ.sum())} of "
            f"{a.size} elements differ only in their bits ({what}): first at "
            f"index {idx}: 0x{int(a_bits[idx]):0{width}x}, expected "
            f"0x{int(e_bits[idx]):0{width}x}")


def assert_close(actual: Any, expected: Any, *, rtol: float = 1e-6,
                 atol: float = 1e-6, err_msg: str = "") -> None:
  """Equal trees, shapes and dtypes; values within ``atol + rtol *
  |expected|`` of each other (compared in f64, NaN matching NaN).

  Example::

    >>> import numpy as np
    >>> from pallas_cpu import testing
    >>> testing.assert_close(np.float32([1.0]), np.float32([1.0 + 1e-7]))
    >>> testing.assert_close(np.float32([1.0]), np.float32([1.1]), rtol=0.01)
    Traceback (most recent call last):
    AssertionError: ...
    Not equal to tolerance rtol=0.01, atol=1e-06
    ...
  """
  with np.errstate(invalid="ignore"):
    for a, e in _leaf_pairs(actual, expected, err_msg):
      complex_ = jnp.issubdtype(a.dtype, jnp.complexfloating)
      wide = np.complex128 if complex_ else np.float64
      np.testing.assert_allclose(a.astype(wide), e.astype(wide), rtol=rtol,
                                 atol=atol, err_msg=err_msg)
