"""Errors of the lowering, each carrying where in the user's kernel it
happened.

A rule raises the plain Python exception that says what went wrong --
``NotImplementedError`` for input pallas_cpu does not lower yet,
``ValueError``/``IndexError``/``TypeError`` for input that is wrong -- and
the jaxpr walker turns it, once, at the innermost equation, into the
``LoweringError`` of the same kind: still an instance of the original
class (``except NotImplementedError`` keeps working), with the primitive,
the user's source line and frame as attributes, the message extended with
them, the rule's exception as ``__cause__`` and the user's traceback of
the equation attached below it (as JAX attaches one to its own lowering
errors).  A kernel using primitives that have no rule at all is rejected
before any IR is built, by a NotImplementedError listing every one
(``jaxpr.check_supported``).
"""
from __future__ import annotations


class LoweringError(Exception):
  """Lowering a kernel failed.

  ``primitive``: the name of the primitive whose rule failed;
  ``source_line``: the user's line, ``file:line:column (function)``;
  ``user_frame``: the innermost user frame of the equation
  (``jax._src.source_info_util.Frame``: file_name, function_name,
  start_line...), or None when no user frame is known.

  Example::

    try:
      pallas_cpu.pallas_call(kernel, out_shape=x, backend="cpu")(x)
    except pallas_cpu.UnsupportedError as e:  # also a NotImplementedError
      print(e.primitive, e.user_frame.file_name, e.user_frame.start_line)
  """

  # Defaults keep the exception copyable and picklable (its args are the
  # message alone; the attributes travel in its __dict__).
  def __init__(self, message: str, *, primitive: str = "",
               source_line: str = "", user_frame=None):
    super().__init__(message)
    self.primitive = primitive
    self.source_line = source_line
    self.user_frame = user_frame


class UnsupportedError(LoweringError, NotImplementedError):
  """The kernel uses a primitive, or a form of one, that pallas_cpu does not
  lower (yet)."""


class LoweringValueError(LoweringError, ValueError):
  """A value, shape or parameter of the kernel is invalid."""


class LoweringIndexError(LoweringError, IndexError):
  """An index or window known at lowering leaves its ref."""


class LoweringTypeError(LoweringError, TypeError):
  """An operand of the wrong kind (e.g. an array where a key is needed)."""


# The kinds a rule's exception keeps, most specific first; anything else
# becomes a plain LoweringError.
_KINDS = ((NotImplementedError, UnsupportedError),
          (IndexError, LoweringIndexError),
          (ValueError, LoweringValueError),
          (TypeError, LoweringTypeError))


def from_rule(error: Exception, *, primitive: str, source_line: str,
              user_frame) -> LoweringError:
  """The LoweringError of ``error``'s kind, for a rule of ``primitive``
  that raised it at the user's ``source_line``; raise it ``from error``."""
  cls = next((c for base, c in _KINDS if isinstance(error, base)),
             LoweringError)
  return cls(f"{error}\n  while lowering primitive '{primitive}' at "
             f"{source_line}", primitive=primitive, source_line=source_line,
             user_frame=user_frame)
