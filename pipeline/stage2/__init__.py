"""Stage 2: the landmark-conditioned head (workflow/rules/stage2.smk, docs/stage2.md).

Importable with torch, numpy, pandas, pyarrow and opencv alone (the GPU machines have nothing else).

Rule modules: ``cache`` (rule ``cache_frames``: the frame and label caches) and ``train`` (rule ``train_head``).
Beside them the training helpers: ``data`` (a subject's training data, head space), ``sampling`` (rays and
patches), ``losses``, ``checkpoint`` (resumable state), ``evaluate`` (test-split head PSNR/SSIM).
The head itself is a backend folder: ``nerf/`` (hash-grid encoding, field, occupancy grid, volume renderer,
``nerf/kernels/`` the fast kernels); a Gaussian-splatting head would be a sibling of ``nerf/``.
"""
