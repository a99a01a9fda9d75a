"""Multi-device suite setup: eight host CPU devices and small meshes.

Runs as its own pytest process (``python -m pytest -q test/devices``): the
device count is fixed when jax initialises its CPU client, so the flags below
must be set before anything imports jax, and test/py's single-device
conftest is not on this directory's path.
"""
from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# As in test/py/conftest.py: no kernels built at moments no test chooses.
os.environ.setdefault("PALLAS_CPU_TIER_UP_MS", "off")

import faulthandler  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

NUM_DEVICES = 8

# A kernel whose semaphores never balance, or an interpret-mode deadlock,
# blocks forever inside an io_callback where no exception can reach it.
# pytest-timeout is not a dependency, so a hung test dumps every thread's
# stack and ends the process instead of stalling the run (CI has a limit).
TEST_TIMEOUT_S = 120


# Interpret-mode limit: every interpret callback first device_puts its
# operands onto CPU device 0; when device 0 is in the mesh and blocked inside
# a callback (a semaphore or DMA wait), a larger operand's copy can wait on it
# forever. The meshes below include device 0 (8 host devices, as specified),
# so the tests keep buffers small; see test_reduce_scatter_pipelined. Meshes
# on devices[1:] of 9 host devices did not deadlock at the guide's sizes.


def mesh_1d(n: int, axis_name: str = "x") -> jax.sharding.Mesh:
  """A ring of the first ``n`` CPU devices along one named axis."""
  devices = jax.devices()
  if len(devices) < n:
    pytest.skip(f"needs {n} devices, jax sees {len(devices)}")
  return jax.sharding.Mesh(np.array(devices[:n]), (axis_name,))


def mesh_2d(rows: int, cols: int, axis_names=("y", "x")) -> jax.sharding.Mesh:
  """A ``rows x cols`` mesh, for kernels naming their peer by a dict device
  id (only the communicating axis given, the other taken from the caller)."""
  devices = jax.devices()
  if len(devices) < rows * cols:
    pytest.skip(f"needs {rows * cols} devices, jax sees {len(devices)}")
  return jax.sharding.Mesh(
      np.array(devices[:rows * cols]).reshape(rows, cols), axis_names)


@pytest.fixture(params=[2, 4, 8], ids=lambda n: f"{n}dev")
def mesh(request):
  """1-D ring meshes of 2, 4 and 8 devices on axis "x"."""
  return mesh_1d(request.param)


@pytest.fixture
def mesh2d():
  """A 2 x 4 mesh, axes ("y", "x")."""
  return mesh_2d(2, 4)


@pytest.fixture(autouse=True)
def _watchdog():
  faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True, file=sys.stderr)
  yield
  faulthandler.cancel_dump_traceback_later()


def pytest_sessionstart(session):
  # Fail loudly rather than skip everything if jax was imported too early.
  assert len(jax.devices()) >= NUM_DEVICES, (
      "XLA_FLAGS did not take effect: jax was initialised before "
      "test/devices/conftest.py")


def mesh_of(n: int, names=("x",)) -> jax.sharding.Mesh:
  """A mesh of the first ``n`` CPU devices: 1-D over ``names``, or the
  shape a ``{name: size}`` dict asks for."""
  if isinstance(names, dict):
    return jax.sharding.Mesh(
        np.array(jax.devices()[:n]).reshape(tuple(names.values())),
        tuple(names))
  return mesh_1d(n, *names)


@pytest.fixture(params=[2, 4, 8], ids=lambda n: f"{n}dev")
def num_devices(request):
  return request.param
