"""Audio features (workflow/rules/audio.smk): rule ``extract_audio_features`` (``features``) for the subject's own
audio and any driving clip; ``encoders`` holds the optional learned encoders (speech_embedding, HuBERT, wav2vec2)."""
