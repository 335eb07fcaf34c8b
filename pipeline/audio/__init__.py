"""Audio (workflow/rules/audio.smk): rule ``measure_av_sync`` (``sync``) measures the subject's lip-audio offset and
writes its audio aligned to the video (``sync/audio.wav``); rule ``extract_audio_features`` (``features``) for that
audio and any driving clip; ``encoders`` holds the optional learned encoders (speech_embedding, HuBERT, wav2vec2)."""
