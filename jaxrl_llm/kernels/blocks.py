"""Block sizes of the fused log-prob core: a frozen, validated dataclass with per-backend defaults."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSizes:
  """Tile shape of the fused log-softmax over ``[N tokens, V vocabulary]``.

  Attributes:
    block_n: rows (tokens) per kernel program (Pallas grid step). The chunked ``jnp`` path
      processes all rows of a vocabulary tile at once and ignores it.
    block_v: vocabulary columns per tile. Peak extra memory is ``O(N · block_v)``.
  """

  block_n: int = 128
  block_v: int = 2048

  def __post_init__(self):
    for name in ("block_n", "block_v"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"BlockSizes.{name} must be a positive int, got {value!r}")
    if self.block_n % 8:
      raise ValueError(f"BlockSizes.block_n must be a multiple of 8, got {self.block_n}")

  @classmethod
  def default(cls, backend: str) -> "BlockSizes":
    """Defaults per backend (``cpu``, ``gpu``, ``tpu``); unknown backends get the CPU ones."""
    return _DEFAULTS.get(backend, _DEFAULTS["cpu"])


_DEFAULTS = {
    # CPU: 512-column tiles measured fastest and smallest for D = 896 (benchmarks/logprob_core.py).
    "cpu": BlockSizes(block_n=128, block_v=512),
    # GPU (Triton): power-of-two tiles; D is contracted in chunks of at most 128, so any D fits.
    "gpu": BlockSizes(block_n=64, block_v=512),
    # TPU (Mosaic): lane-aligned tiles (multiples of 128). 256 rows per block: each W tile
    # streamed from HBM then feeds 2·256 FLOP per byte, above v5e's 240 FLOP/B ridge. 512 columns:
    # W traffic does not depend on it, and Mosaic's compile time grows with the tile's area (a
    # 256×2048 f32 tile took 14 s for the forward kernel alone, 256×512 about 2 s). block_v is
    # halved at compile time where a grid step would not fit the chip's VMEM (pallas_tpu.py).
    "tpu": BlockSizes(block_n=256, block_v=512),
}
