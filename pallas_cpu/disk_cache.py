"""The persistent kernel cache (PALLAS_CPU_CACHE_DIR): never breaks a call.

One file per kernel and machine, ``<fingerprint>-<machine>.so``: the kernel
id the HLO carries (stable across machines, so JAX's persistent compilation
cache and ``jax.export`` keep working) and a hash of
``native.machine_description()`` (target, CPU and features, LLVM version),
so a cache shared between machines never hands one of them code its CPU
cannot run.

An entry is the shared object followed by a trailer holding the SHA-256 of
the bytes before it (the ELF loader ignores bytes past what the headers
describe, so the entry is dlopen'ed in place).  Entries are written to a
temporary file in the cache directory and renamed into place (concurrent
processes may store the same kernel).  Loading checks the checksum, then
dlopen and the entry symbol; an entry failing any of these is discarded
with a warning and the kernel rebuilt.  A cache directory that cannot be
created or written is skipped with one warning per process.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings

from pallas_cpu import native

_MAGIC = b"\n#pallas_cpu cache entry sha256="
_TRAILER_LEN = len(_MAGIC) + 64 + 1   # magic, hex digest, newline


class CacheWarning(RuntimeWarning):
  """The disk cache could not be used as is; the call still went through."""


def _warn(message: str) -> None:
  # (The message is built by the caller, whose line Python shows with it.)
  warnings.warn(message, CacheWarning, stacklevel=2)


def machine_tag() -> str:
  """A short hash of the machine description (not cached itself, so tests
  can substitute ``native.machine_description``)."""
  desc = native.machine_description().encode()
  return hashlib.sha256(desc).hexdigest()[:16]


def entry_path(cache_dir: str | None, fingerprint: str) -> str | None:
  """Where the kernel ``fingerprint`` built for this machine lives, or None
  when there is no usable cache directory."""
  if cache_dir is None or not usable_dir(cache_dir):
    return None
  return os.path.join(cache_dir, f"{fingerprint}-{machine_tag()}.so")


@functools.cache
def usable_dir(cache_dir: str) -> bool:
  """Creates ``cache_dir`` and checks a file can be written in it; warns
  (once per process and directory) when not."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=cache_dir, prefix=".probe-")
    os.close(fd)
    os.unlink(probe)
    return True
  except OSError as e:
    message = (f"pallas_cpu: the kernel cache directory {cache_dir!r} "
               f"(PALLAS_CPU_CACHE_DIR) is unusable ({e}); kernels are "
               f"compiled without the disk cache in this process")
    _warn(message)
    return False


def _trailer(body: bytes) -> bytes:
  return _MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n"


def store(built: str, entry: str) -> bool:
  """Copies the shared object ``built`` into the cache as ``entry`` with
  its checksum, atomically.  False (with a warning) when it cannot."""
  with open(built, "rb") as f:
    body = f.read()
  staging = None
  try:
    fd, staging = tempfile.mkstemp(dir=os.path.dirname(entry),
                                   prefix=".", suffix=".so.tmp")
    with os.fdopen(fd, "wb") as f:
      f.write(body + _trailer(body))
    os.replace(staging, entry)
    return True
  except OSError as e:
    if staging is not None and os.path.exists(staging):
      os.unlink(staging)
    message = (f"pallas_cpu: could not write the kernel cache entry "
               f"{entry} ({e}); the kernel is used uncached")
    _warn(message)
    return False


def damage(entry: str) -> str | None:
  """Why ``entry`` cannot be trusted, or None when its checksum holds."""
  with open(entry, "rb") as f:
    data = f.read()
  if len(data) < _TRAILER_LEN or not data[-_TRAILER_LEN:].startswith(_MAGIC):
    return (f"no checksum at its end ({len(data)} bytes: truncated, or not "
            f"written by this version of pallas_cpu)")
  body = data[:-_TRAILER_LEN]
  if _trailer(body) != data[-_TRAILER_LEN:]:
    return "checksum mismatch"
  return None


def load(entry: str) -> tuple | None:
  """(library, entry address) of the cached kernel, or None when there is
  no entry or it is damaged (then it is discarded, with a warning)."""
  try:
    reason = damage(entry)
  except FileNotFoundError:
    return None
  except OSError as e:
    reason = f"unreadable: {e}"
  if reason is None:
    try:
      return native.load(entry)
    except native.NativeLoadError as e:
      reason = str(e)
  _discard(entry, reason)
  return None


def _discard(entry: str, reason: str) -> None:
  message = (f"pallas_cpu: discarded a damaged kernel cache entry {entry} "
             f"({reason}); rebuilding it")
  _warn(message)
  try:
    os.unlink(entry)
  except OSError:
    pass   # gone already, or a read-only cache: the rebuild replaces it
