# Audio features (pipeline/audio/): the subject's own speech and any driving clip, one rule for both.
#   results/{subject}/audio/self.{npz,parquet}    <- results/{subject}/ingest/audio.wav
#   results/{subject}/audio/{clip}.{npz,parquet}  <- data/audio/{clip}.wav (subject's config applies)
# "self" is reserved for the subject's own audio, so a driving wav can never shadow it
# (data/audio/self.wav is ignored: rename it).
# (helpers SELF_AUDIO, driving_clips, audio_features_targets, audio_source: common.smk)


rule extract_audio_features:
    """log-mel, Praat formants/f0, energy (+ optional learned encoder) per 25 fps frame, windows [N, 16, D]."""
    input:
        audio=audio_source,
        code=code("audio/features", "audio/encoders", "core/media"),
    output:
        npz=S.audio.features("{clip}"),
        table=S.audio.frames("{clip}"),
    wildcard_constraints:
        clip=SUBJECT_PATTERN,
    params:
        cfg=stage_config("audio"),
    log:
        "logs/extract_audio_features/{subject}/{clip}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/extract_audio_features/{subject}/{clip}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m pipeline.audio.features --audio {input.audio:q} --npz {output.npz:q} --table {output.table:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"
