"""The multi-device suite runs in its own pytest process: XLA's CPU client
gets its device count when JAX starts, so the flag is set here, before
anything imports jax (``scripts/test.sh`` runs ``pytest test/devices``
separately from ``test/py``)."""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG
                             ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

assert len(jax.devices()) == 8, (
    "the devices suite needs 8 CPU devices: jax was imported before "
    "test/devices/conftest.py set XLA_FLAGS")


def mesh_of(n: int, names=("x",)) -> Mesh:
  """A mesh of the first ``n`` CPU devices: 1-D, or the shape the names
  ask for as ``{name: size}``."""
  if isinstance(names, dict):
    shape = tuple(names.values())
    return Mesh(np.array(jax.devices()[:n]).reshape(shape), tuple(names))
  return Mesh(np.array(jax.devices()[:n]), tuple(names))


@pytest.fixture(params=[2, 4, 8], ids=lambda n: f"{n}dev")
def num_devices(request):
  return request.param
