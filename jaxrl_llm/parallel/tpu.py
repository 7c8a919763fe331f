"""TPU targets without a TPU: slice names, chip facts and device descriptions to compile for.

With ``libtpu`` installed (``pip install "jax[tpu]"``, same version as jax) XLA's TPU compiler
runs on any machine: :func:`topology` returns the devices of a slice (``v5e-8`` ...) that
``jax.jit(...).lower(...).compile()`` can compile for, and :func:`chip` the per-device facts
(HBM, VMEM, peak bf16 FLOP/s) that a memory or roofline estimate needs, from JAX's own table.
:func:`compiling_for` tells the Pallas TPU kernels which chip they are being built for (their
tile sizes depend on its VMEM); on a TPU host the local chip is used.

Slice names follow Cloud TPU's accelerator types: ``v5e-N`` and ``v6e-N`` count chips (one
TensorCore each), ``v5p-N`` counts TensorCores (two per chip, one JAX device per chip:
``v5p-8`` is 4 devices).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os

# Chip generation -> (JAX device_kind spelling, TensorCores per device, host bounds of a slice).
_GENERATIONS = {"v5e": ("TPU v5 lite", 1), "v6e": ("TPU v6 lite", 1), "v5p": ("TPU v5", 2)}
# Chips in a slice -> libtpu's topology layout (2-D for the lite chips, 3-D for v5p).
_LITE_LAYOUTS = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_V5P_LAYOUTS = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
                256: "4x8x8", 512: "8x8x8"}

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxrl_llm_tpu_target",
                                                                    default=None)


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-device facts of a TPU generation (a v5p device is one chip of two TensorCores)."""

  generation: str  # "v5e", "v5p", "v6e"
  device_kind: str  # JAX's spelling ("TPU v5 lite").
  hbm_bytes: int
  vmem_bytes: int  # Per TensorCore.
  bf16_flops: float  # Peak bf16 FLOP/s of one device.
  hbm_bytes_per_s: float


def slice_names() -> list[str]:
  """Every slice name :func:`topology` accepts."""
  names = [f"{g}-{n}" for g in ("v5e", "v6e") for n in _LITE_LAYOUTS]
  return names + [f"v5p-{2 * n}" for n in _V5P_LAYOUTS]


def parse_slice(name: str) -> tuple[str, int, str]:
  """``"v5e-8"`` -> (generation, devices, libtpu topology name ``"v5e:2x4"``)."""
  gen, _, count = name.partition("-")
  if gen not in _GENERATIONS or not count.isdigit():
    raise ValueError(f"unknown TPU slice {name!r}: expected one of {', '.join(slice_names())}")
  n = int(count)
  if gen == "v5p":
    chips = n // 2
    layout = _V5P_LAYOUTS.get(chips) if n % 2 == 0 else None
  else:
    chips, layout = n, _LITE_LAYOUTS.get(n)
  if layout is None:
    raise ValueError(f"unknown TPU slice {name!r}: {gen} slices here are "
                     f"{', '.join(s for s in slice_names() if s.startswith(gen))}")
  return gen, chips, f"{gen}:{layout}"


def chip(generation_or_kind: str) -> Chip:
  """The facts of one device of a generation (``"v5e"``) or device kind (``"TPU v5 lite"``)."""
  from jax.experimental.pallas import tpu as pltpu

  gen = next((g for g, (kind, _) in _GENERATIONS.items()
              if generation_or_kind in (g, kind)), None)
  if gen is None:
    raise ValueError(f"unknown TPU chip {generation_or_kind!r}: known {sorted(_GENERATIONS)}")
  kind, cores = _GENERATIONS[gen]
  per_core = pltpu.get_tpu_info_for_chip(pltpu.ChipVersion(gen), 1)
  return Chip(generation=gen, device_kind=kind, hbm_bytes=int(per_core.hbm_capacity_bytes) * cores,
              vmem_bytes=int(per_core.vmem_capacity_bytes),
              bf16_flops=float(per_core.bf16_ops_per_second) * cores,
              hbm_bytes_per_s=float(per_core.mem_bw_bytes_per_second) * cores)


def _quiet_libtpu():
  # libtpu looks for a TPU VM's metadata at start-up and logs errors when there is none.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Compiling only: several processes may load libtpu at once (it locks the chips otherwise).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology(name: str) -> list:
  """The JAX devices of TPU slice ``name`` (``"v5e-8"``) to lower and compile for, from any
  machine with ``libtpu`` installed. A name that is not a slice is a ``ValueError`` listing the
  known ones; a missing ``libtpu`` is a ``RuntimeError`` saying what to install."""
  _, _, topo_name = parse_slice(name)
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    import jax
    raise RuntimeError(f"compiling for TPU slice {name!r} needs libtpu: pip install "
                       f"\"jax[tpu]=={jax.__version__}\"") from e
  _quiet_libtpu()
  from jax.experimental import topologies

  return list(topologies.get_topology_desc(platform="tpu", topology_name=topo_name).devices)


@contextlib.contextmanager
def compiling_for(device_kind: str):
  """Within this context the Pallas TPU kernels size their tiles for ``device_kind``'s VMEM
  (``"TPU v5 lite"`` or a generation ``"v5e"``), whatever machine traces them."""
  token = _TARGET.set(chip(device_kind).device_kind)
  try:
    yield
  finally:
    _TARGET.reset(token)


def target_vmem_bytes() -> int | None:
  """VMEM per TensorCore of the chip being compiled for: the :func:`compiling_for` target, else
  the local TPU, else None."""
  kind = _TARGET.get()
  if kind is not None:
    return chip(kind).vmem_bytes
  import jax

  if jax.default_backend() == "tpu":
    try:
      return chip(jax.devices()[0].device_kind).vmem_bytes
    except ValueError:  # A generation this table does not know: ask the runtime.
      from jax.experimental.pallas import tpu as pltpu
      return int(pltpu.get_tpu_info().vmem_capacity_bytes)
  return None


def compile_backend() -> str:
  """The backend code is being traced for: ``"tpu"`` inside :func:`compiling_for`, else
  ``jax.default_backend()``. Backend-dependent choices (the log-prob kernel, its tiles, Pallas
  interpret mode) ask this, so an ahead-of-time compile for a slice builds what the slice runs."""
  if _TARGET.get() is not None:
    return "tpu"
  import jax

  return jax.default_backend()
