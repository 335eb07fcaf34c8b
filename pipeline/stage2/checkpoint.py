"""Checkpoints of head-NeRF training: atomic, ``torch.load(weights_only=True)``-loadable, complete for resuming.

``stage2/checkpoint.pt`` holds plain tensors and numbers only: model, optimiser, scheduler and occupancy-grid
state dicts, the error maps, the step, the train curve, accumulated wall seconds, and every random state
(torch CPU, CUDA when present, the sampler's ``torch.Generator``, numpy's PCG64 as int64 words). With
``stage2.deterministic`` a resumed run therefore continues bit-for-bit like an uninterrupted one (tested on CPU).

:class:`StopFlag` turns SIGTERM (SLURM's pre-emption, ``snakemake`` cancel) into a flag that the loop checks at
the end of a step: it writes a checkpoint and exits 143 (interrupted: outputs not produced, re-run resumes).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.artifacts import ArtifactError, atomic_output

log = logging.getLogger("pipeline.stage2.checkpoint")

MASK64 = (1 << 64) - 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM


def _split128(v: int) -> list[int]:
    """A 128-bit unsigned int as four signed int64-safe 32-bit words (little end first)."""
    return [(v >> (32 * i)) & 0xFFFFFFFF for i in range(4)]


def _join128(words: list[int]) -> int:
    return sum(int(w) << (32 * i) for i, w in enumerate(words))


def numpy_rng_state(rng: np.random.Generator) -> torch.Tensor:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators are checkpointed, got {st['bit_generator']}")
    words = _split128(st["state"]["state"]) + _split128(st["state"]["inc"]) + [st["has_uint32"], st["uinteger"]]
    return torch.tensor(words, dtype=torch.int64)


def set_numpy_rng_state(rng: np.random.Generator, t: torch.Tensor) -> None:
    w = [int(x) for x in t.tolist()]
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": _join128(w[0:4]), "inc": _join128(w[4:8])},
                               "has_uint32": w[8], "uinteger": w[9]}


def save(path: Path | str, state: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load(path: Path | str, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ArtifactError(path, f"not a loadable stage-2 checkpoint ({exc})") from exc


def rng_states(sampler_gen: torch.Generator, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    out = {"rng_torch": torch.get_rng_state(), "rng_sampler": sampler_gen.get_state(),
           "rng_numpy": numpy_rng_state(rng)}
    out["rng_cuda"] = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(0, dtype=torch.uint8)
    return out


def restore_rng(state: dict[str, Any], sampler_gen: torch.Generator, rng: np.random.Generator) -> None:
    torch.set_rng_state(state["rng_torch"].cpu())
    sampler_gen.set_state(state["rng_sampler"].cpu())
    set_numpy_rng_state(rng, state["rng_numpy"])
    if torch.cuda.is_available() and state["rng_cuda"].numel():
        torch.cuda.set_rng_state(state["rng_cuda"].cpu())


class StopFlag:
    """Context manager: SIGTERM sets ``self.stop`` instead of killing the process (previous handler restored)."""

    def __init__(self) -> None:
        self.stop = False
        self._prev = None

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("SIGTERM: finishing the step, writing a checkpoint, then exiting")
        self.stop = True

    def __enter__(self) -> "StopFlag":
        try:
            self._prev = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: no handler, never stops early
            self._prev = None
        return self

    def __exit__(self, *exc) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
