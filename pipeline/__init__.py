"""Talking-head pipeline: one talking video in, an audio-driven 3D talking head out.

One folder per stage group of the DAG, each matching a rule file ``workflow/rules/<group>.smk``: ``preprocess``
(ingest, crop, landmarks, tracking, parsing, action units), ``audio``, ``stage1`` (audio -> landmarks), ``stage2``
(the head; the NeRF backend in ``stage2/nerf/``), ``torso``, ``render``, ``evaluate``, ``export``. In each, one
module per rule with ``run()`` and a small CLI (``python -m pipeline.<group>.<module>``), its helpers beside it.
``core`` holds what several stages share: where a subject's files lie (``core/layout.py``), the artifact
contracts, typed configs, media I/O, metrics, errors, device choice, the progress bar and the CLI helper.

Importing this package imports nothing heavy: stage-2 training runs on GPU machines that
have torch, numpy, pandas, pyarrow and opencv only, so each module imports its own
preprocessing libraries (mediapipe, librosa, parselmouth, PyAV) where it needs them.
"""

__version__ = "0.1.0"
