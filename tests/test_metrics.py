"""Metric functions against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.metrics import LIP_IDS, best_lag, mouth_lmd, mouth_opening, psnr, rms_envelope, ssim


def test_identical_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert psnr(img, img) == float("inf")
    assert ssim(img, img) == pytest.approx(1.0)


def test_psnr_matches_noise_variance():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 0.8, (128, 128, 3))
    b = a + rng.choice([-0.01, 0.01], a.shape)  # MSE exactly 1e-4 -> 40 dB
    assert psnr(a, b) == pytest.approx(40.0, abs=1e-6)
    mask = np.zeros((128, 128), bool)
    mask[:10] = True
    b2 = b.copy()
    b2[10:] = 0  # outside the mask: ignored
    assert psnr(a, b2, mask) == pytest.approx(40.0, abs=1e-6)


def test_ssim_drops_with_blur_and_noise():
    import cv2

    rng = np.random.default_rng(2)
    img = cv2.resize(rng.uniform(0, 1, (16, 16, 3)), (128, 128), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    blurred = cv2.GaussianBlur(img, (9, 9), 3)
    noisy = (img + rng.normal(0, 0.2, img.shape)).clip(0, 1)
    s_blur, s_noise = ssim(img, blurred), ssim(img, noisy)
    assert 0 < s_noise < 0.9 and 0 < s_blur < 1.0


def test_best_lag_recovers_shift():
    rng = np.random.default_rng(3)
    x = np.convolve(rng.normal(size=500), np.ones(5) / 5, mode="same")
    y = np.roll(x, 3) + 0.1 * rng.normal(size=500)  # y[t] = x[t-3]: audio 3 frames late
    lag, corr = best_lag(x, y, max_lag=6)
    assert lag == 3 and corr > 0.8


def test_mouth_lmd_ignores_translation_and_measures_shape():
    rng = np.random.default_rng(4)
    true = rng.normal(size=(10, 478, 3)) * 20
    assert mouth_lmd(true + np.array([5.0, -3.0, 0.0]), true) == pytest.approx(0.0, abs=1e-9)
    pred = true.copy()
    pred[:, LIP_IDS, 1] *= 1.1  # stretched lips
    assert mouth_lmd(pred, true) > 0.5


def test_mouth_opening_and_rms():
    lm = np.zeros((2, 478, 2))
    lm[:, 10] = [0, 0]
    lm[:, 152] = [0, 100]
    lm[:, 13] = [0, 50]
    lm[:, 14] = [[0, 50], [0, 60]]
    np.testing.assert_allclose(mouth_opening(lm), [0.0, 0.1])
    sr, fps = 16000, 25
    sig = np.concatenate([np.zeros(640), 0.5 * np.ones(640)])
    np.testing.assert_allclose(rms_envelope(sig, sr, fps), [0.0, 0.5])
