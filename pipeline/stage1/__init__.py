"""Stage 1 (GtsTalkNeRF): audio features -> per-frame pose-free landmarks of the subject.

Rule modules: ``train.py`` (rules ``train_audio2lmk`` and ``pretrain_audio2lmk``) and ``predict.py`` (rule
``predict_landmarks``); beside them ``model.py`` the Transformer, ``data.py`` targets (PCA of canonical landmark
offsets), sequence batches and sliding-window prediction, ``fit.py`` the training loop, ``io.py`` the input
files, model files and predictions. Imports torch/numpy/pyarrow only.
"""
