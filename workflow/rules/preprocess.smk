# Preprocessing of a subject's clip (pipeline/preprocess/): ingest -> crop -> landmarks -> tracking -> parsing -> AUs.
# Paths: S.<stage>.<file> from pipeline/core/layout.py (common.smk).


rule ingest_video:
    """Any clip -> 25 fps constant video, 16 kHz mono audio, meta.json (split, offsets, sha256)."""
    input:
        video=source_video,
        code=code("preprocess/ingest", "core/media"),
    output:
        video=S.ingest.video,
        audio=S.ingest.audio,
        meta=S.ingest.meta,
    params:
        cfg=stage_config("ingest"),
        outdir=stage_dir("ingest"),
    log:
        "logs/ingest_video/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/ingest_video/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.preprocess.ingest --video {input.video:q} --outdir {params.outdir:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule crop_faces:
    """One fixed square face crop per clip (static camera), resized to crop.size; face boxes and window."""
    input:
        video=S.ingest.video,
        meta=S.ingest.meta,
        code=code("preprocess/crop", "preprocess/mediapipe_models", "core/media"),
    output:
        video=S.crop.video,
        boxes=S.crop.boxes,
        crop=S.crop.meta,
    params:
        cfg=stage_config("crop"),
        outdir=stage_dir("crop"),
    log:
        "logs/crop_faces/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/crop_faces/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.preprocess.crop --video {input.video:q} --meta {input.meta:q}"
        " --outdir {params.outdir:q} --config {params.cfg:q} > {log:q} 2>&1"


rule detect_landmarks:
    """mediapipe FaceLandmarker on every cropped frame: 478 points, 52 blendshapes, 4x4 pose; contact sheet."""
    input:
        video=S.crop.video,
        crop=S.crop.meta,
        meta=S.ingest.meta,
        code=code("preprocess/landmarks", "preprocess/face_landmarker", "preprocess/mediapipe_models", "core/media"),
    output:
        landmarks=S.landmarks.table,
        sheet=S.landmarks.sheet,
    params:
        cfg=stage_config("landmarks"),
        outdir=stage_dir("landmarks"),
    log:
        "logs/detect_landmarks/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/detect_landmarks/{subject}.tsv"
    threads: 16
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m pipeline.preprocess.landmarks --video {input.video:q} --crop-meta {input.crop:q} --meta {input.meta:q}"
        " --outdir {params.outdir:q} --threads {threads} --config {params.cfg:q} > {log:q} 2>&1"


rule demo_video:
    """The built-in demo subject (astronaut photo + synthesised speech): needs nothing downloaded."""
    output:
        f"{config['data_dir']}/demo/demo.mp4",
    log:
        "logs/demo_video/demo.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m pipeline.preprocess.demo --out {output:q} > {log:q} 2>&1"


rule parse_faces:
    """Per-frame labels (bg/torso/neck/face/hair/lips/mouth/eyes), background plate, torso mattes."""
    input:
        video=S.crop.video,
        landmarks=S.landmarks.table,
        code=code("preprocess/parsing/parse", "preprocess/parsing/geometry", "preprocess/parsing/background",
                  "preprocess/mediapipe_models", "core/media"),
    output:
        labels=S.parsing.labels,
        torso=S.parsing.torso,
        background=S.parsing.background,
        sheet=S.parsing.sheet,
        stats=S.parsing.stats,
    params:
        cfg=stage_config("parsing"),
        outdir=stage_dir("parsing"),
    log:
        "logs/parse_faces/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/parse_faces/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m pipeline.preprocess.parsing.parse --crop-video {input.video:q} --landmarks {input.landmarks:q}"
        " --outdir {params.outdir:q} --config {params.cfg:q} > {log:q} 2>&1"


rule track_face:
    """Per-subject linear face model, per-frame head pose + expression, one focal length; NeRF transforms."""
    input:
        landmarks=S.landmarks.table,
        crop=S.crop.meta,
        meta=S.ingest.meta,
        video=S.crop.video,
        code=code("preprocess/tracking/track", "preprocess/tracking/fit", "preprocess/tracking/plots",
                  "preprocess/mediapipe_models", "core/media", "core/metrics"),   # metrics.RIGID_IDS: the gauge
    output:
        tracks=S.tracking.tracks,
        model=S.tracking.face_model,
        canonical=S.tracking.canonical,
        transforms=S.tracking.transforms,
        metrics=S.tracking.metrics,
        overlay=S.tracking.overlay,
        pose=S.tracking.pose,
    params:
        cfg=stage_config("tracking"),
        outdir=stage_dir("tracking"),
    log:
        "logs/track_face/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/track_face/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m pipeline.preprocess.tracking.track --landmarks {input.landmarks:q} --crop-meta {input.crop:q} --meta {input.meta:q}"
        " --video {input.video:q} --outdir {params.outdir:q} --threads {threads}"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule extract_aus:
    """Action units on OpenFace's 0-5 scale (AU01-26, AU45 blink) from blendshapes + pose-free geometry; blinks."""
    input:
        landmarks=S.landmarks.table,
        canonical=S.tracking.canonical,
        meta=S.ingest.meta,
        code=code("preprocess/action_units", "preprocess/au_signals"),
    output:
        aus=S.aus.table,
        stats=S.aus.stats,
    params:
        cfg=stage_config("action_units"),
        outdir=stage_dir("aus"),
    log:
        "logs/extract_aus/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/extract_aus/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.preprocess.action_units --landmarks {input.landmarks:q} --canonical {input.canonical:q}"
        " --meta {input.meta:q} --outdir {params.outdir:q} --config {params.cfg:q} > {log:q} 2>&1"
