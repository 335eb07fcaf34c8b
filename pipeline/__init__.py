"""Talking-head pipeline: one talking video in, an audio-driven 3D talking head out.

Importing this package imports nothing heavy: stage-2 training runs on GPU machines that
have torch, numpy, pandas, pyarrow and opencv only, so each module imports its own
preprocessing libraries (mediapipe, librosa, parselmouth, PyAV) where it needs them.
"""

__version__ = "0.1.0"
