"""Stage 1 (GtsTalkNeRF): audio features -> per-frame pose-free landmarks of the subject.

``model.py`` the Transformer, ``data.py`` targets (PCA of canonical landmark offsets) and
sequence batches, ``train.py`` the rule ``train_audio2lmk``, ``predict.py`` the rule
``predict_landmarks``. Imports torch/numpy/pyarrow only.
"""
