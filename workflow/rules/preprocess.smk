# Preprocessing of a subject's clip: ingest -> crop -> landmarks -> tracking -> parsing.


rule ingest_video:
    """Any clip -> 25 fps constant video, 16 kHz mono audio, meta.json (split, offsets, sha256)."""
    input:
        video=source_video,
        code=code("preprocess/ingest", "core/media"),
    output:
        video="results/{subject}/ingest/video.mp4",
        audio="results/{subject}/ingest/audio.wav",
        meta="results/{subject}/ingest/meta.json",
    params:
        cfg=stage_config("ingest"),
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
        "python -m pipeline.preprocess.ingest --video {input.video:q} --outdir results/{wildcards.subject}/ingest"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule crop_faces:
    """One fixed square face crop per clip (static camera), resized to crop.size; face boxes and window."""
    input:
        video="results/{subject}/ingest/video.mp4",
        meta="results/{subject}/ingest/meta.json",
        code=code("preprocess/crop", "preprocess/mediapipe_models", "core/media"),
    output:
        video="results/{subject}/crop/video.mp4",
        boxes="results/{subject}/crop/boxes.parquet",
        crop="results/{subject}/crop/crop.json",
    params:
        cfg=stage_config("crop"),
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
        " --outdir results/{wildcards.subject}/crop --config {params.cfg:q} > {log:q} 2>&1"


rule detect_landmarks:
    """mediapipe FaceLandmarker on every cropped frame: 478 points, 52 blendshapes, 4x4 pose; contact sheet."""
    input:
        video="results/{subject}/crop/video.mp4",
        crop="results/{subject}/crop/crop.json",
        meta="results/{subject}/ingest/meta.json",
        code=code("preprocess/landmarks", "preprocess/face_landmarker", "preprocess/mediapipe_models", "core/media"),
    output:
        landmarks="results/{subject}/landmarks/landmarks.parquet",
        sheet="results/{subject}/landmarks/contact_sheet.png",
    params:
        cfg=stage_config("landmarks"),
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
        " --outdir results/{wildcards.subject}/landmarks --threads {threads} --config {params.cfg:q} > {log:q} 2>&1"


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
        video="results/{subject}/crop/video.mp4",
        landmarks="results/{subject}/landmarks/landmarks.parquet",
        code=code("preprocess/parsing/parse", "preprocess/parsing/geometry", "preprocess/parsing/background",
                  "preprocess/mediapipe_models", "core/media"),
    output:
        labels="results/{subject}/parsing/labels.npz",
        torso="results/{subject}/parsing/torso.npz",
        background="results/{subject}/parsing/background.png",
        sheet="results/{subject}/parsing/contact_sheet.png",
        stats="results/{subject}/parsing/stats.json",
    params:
        cfg=stage_config("parsing"),
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
        " --outdir results/{wildcards.subject}/parsing --config {params.cfg:q} > {log:q} 2>&1"


rule track_face:
    """Per-subject linear face model, per-frame head pose + expression, one focal length; NeRF transforms."""
    input:
        landmarks="results/{subject}/landmarks/landmarks.parquet",
        crop="results/{subject}/crop/crop.json",
        meta="results/{subject}/ingest/meta.json",
        video="results/{subject}/crop/video.mp4",
        code=code("preprocess/tracking/track", "preprocess/tracking/fit", "preprocess/tracking/plots",
                  "preprocess/mediapipe_models", "core/media"),
    output:
        tracks="results/{subject}/tracking/tracks.parquet",
        model="results/{subject}/tracking/face_model.npz",
        canonical="results/{subject}/tracking/canonical.npz",
        transforms="results/{subject}/tracking/transforms.json",
        metrics="results/{subject}/tracking/metrics.json",
        overlay="results/{subject}/tracking/overlay.png",
        pose="results/{subject}/tracking/pose.png",
    params:
        cfg=stage_config("tracking"),
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
        " --video {input.video:q} --outdir results/{wildcards.subject}/tracking --threads {threads}"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule extract_aus:
    """Action units on OpenFace's 0-5 scale (AU01-26, AU45 blink) from blendshapes + pose-free geometry; blinks."""
    input:
        landmarks="results/{subject}/landmarks/landmarks.parquet",
        canonical="results/{subject}/tracking/canonical.npz",
        meta="results/{subject}/ingest/meta.json",
        code=code("preprocess/action_units", "preprocess/au_signals"),
    output:
        aus="results/{subject}/aus/aus.parquet",
        stats="results/{subject}/aus/aus.json",
    params:
        cfg=stage_config("action_units"),
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
        " --meta {input.meta:q} --outdir results/{wildcards.subject}/aus --config {params.cfg:q} > {log:q} 2>&1"
