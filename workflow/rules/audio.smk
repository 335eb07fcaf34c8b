# Audio (pipeline/audio/): the subject's lip-audio sync, then the features of its own speech and of any driving clip.
#   results/{subject}/sync/{sync.json,audio.wav}  <- ingest/audio.wav, crop/video.mp4, landmarks/landmarks.parquet
#   results/{subject}/audio/self.{npz,parquet}    <- results/{subject}/sync/audio.wav (the audio aligned to the video)
#   results/{subject}/audio/{clip}.{npz,parquet}  <- data/audio/{clip}.wav (subject's config applies)
# "self" is reserved for the subject's own audio, so a driving wav can never shadow it
# (data/audio/self.wav is ignored: rename it).
# (helpers SELF_AUDIO, driving_clips, audio_features_targets, audio_source: common.smk)


rule measure_av_sync:
    """Lip-audio offset of the subject's clip (evaluate's detector, whole clip); sync/audio.wav = the audio shifted
    by the applied correction: what stage 1, stage 2, the render's mux and the export read."""
    input:
        audio=S.ingest.audio,
        meta=S.ingest.meta,
        video=S.crop.video,
        crop_meta=S.crop.meta,
        landmarks=S.landmarks.table,
        code=code("audio/sync", "core/metrics", "core/sync_detector", "core/media"),
    output:
        offset=S.sync.offset,
        audio=S.sync.audio,
    params:
        cfg=stage_config("sync"),
        outdir=stage_dir("sync"),
    log:
        "logs/measure_av_sync/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/measure_av_sync/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "python -m pipeline.audio.sync --audio {input.audio:q} --meta {input.meta:q} --video {input.video:q}"
        " --crop-meta {input.crop_meta:q} --landmarks {input.landmarks:q} --outdir {params.outdir:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"


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
