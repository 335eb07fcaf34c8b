"""Preprocessing of a subject's clip (workflow/rules/preprocess.smk): ingest -> crop -> landmarks -> tracking /
parsing -> action units.

Rule modules: ``ingest``, ``crop``, ``landmarks``, ``tracking/track``, ``parsing/parse``, ``action_units``, and
``demo`` (the built-in demo clip). Their helpers sit beside them: ``mediapipe_models`` (the offline model
files), ``face_landmarker`` (the FaceLandmarker worker, also run by the evaluation), ``au_signals`` (the AU
mappings and fit), ``tracking/fit`` and ``tracking/plots``, ``parsing/geometry`` and ``parsing/background``.
"""
