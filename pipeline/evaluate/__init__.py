"""Evaluation (workflow/rules/evaluate.smk): rule ``evaluate`` (``subject``: one subject's render against its
ground truth) and rule ``benchmark_table`` (``table``: one row per subject). Beside them ``plots`` (the figures)
and ``dlib68`` (dlib's 68-point predictor for the papers' mouth LMD). ``python -m pipeline.evaluate subject|table``
runs either CLI."""
