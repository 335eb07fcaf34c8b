"""The small shared CLI every stage module uses: a few path arguments, ``--config JSON``, logging.

A :class:`~pipeline.core.errors.PipelineError` becomes one line on stderr (``error: <file>: <what>``)
and exit code 1, so a Snakemake log ends with the reason instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from pipeline.core.config import ConfigError
from pipeline.core.errors import PipelineError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def parser(description: str, paths: Sequence[str], *, config: bool = True) -> argparse.ArgumentParser:
    """An argparse parser with one required ``--<name>`` option per path and an optional ``--config``."""
    p = argparse.ArgumentParser(description=description)
    for name in paths:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True)
    if config:
        p.add_argument("--config", default="{}", help="this stage's config section as JSON (from config.yaml)")
    return p


def guarded(fn: Callable[[], None]) -> None:
    """Run a CLI body; PipelineError / ConfigError -> one clear line and exit 1."""
    setup_logging()
    try:
        fn()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        sys.exit(1)
