"""tiny-cuda-nn backend of the hash-grid encoding: available only where ``import tinycudann`` succeeds on CUDA.

Its parameters use tcnn's own layout and its grid is offset by half a cell (tcnn's ``scale = base b^l - 1``,
``pos = x scale + 0.5``), so its checkpoints are not interchangeable with the torch table.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from pipeline.stage2.nerf.hash_grid import HashGridSpec


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn HashGrid (CUDA only; float32 output; tcnn's own parameter layout)."""

    def __init__(self, spec: HashGridSpec):
        super().__init__()
        import tinycudann as tcnn

        self.spec = spec
        config = {
            "otype": "HashGrid",
            "n_levels": spec.levels,
            "n_features_per_level": spec.features_per_level,
            "log2_hashmap_size": spec.log2_hashmap_size,
            "base_resolution": spec.base_resolution,
            "per_level_scale": spec.growth_factor,
        }
        self.impl = tcnn.Encoding(n_input_dims=spec.n_dims, encoding_config=config, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x.clamp(0.0, 1.0)).float()


def tcnn_available() -> bool:
    if importlib.util.find_spec("tinycudann") is None:
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # a broken/incompatible build is "not available", never a crash at import
        return False
    return torch.cuda.is_available()
