# The final videos (pipeline/render/: video.py the rules, head, compositing, motion; the torso model from torso.smk):
#   results/{subject}/video.mp4 (+ video.json)          test split, re-synthesised from its own audio
#   results/{subject}/drive/{clip}.mp4 (+ {clip}.json)  any data/audio/{clip}.wav
# Frame synthesis needs torch/numpy/opencv only; to render on a GPU machine without ffmpeg, call
# `python -m pipeline.render video --out X.frames.npz ...` there and `python -m pipeline.render mux` here.


RENDER_CODE = code("render/__main__", "render/video", "render/compositing", "render/motion", "render/head",
                   "torso/model", "core/media", "stage2/data") + NERF_CODE

RENDER_SUBJECT_INPUTS = dict(
    head="results/{subject}/stage2/head.json",
    weights="results/{subject}/stage2/head.pt",
    occupancy="results/{subject}/stage2/occupancy.npz",
    torso="results/{subject}/torso/torso.pt",
    torso_meta="results/{subject}/torso/torso.json",
    transforms="results/{subject}/tracking/transforms.json",
    tracks="results/{subject}/tracking/tracks.parquet",
    background="results/{subject}/parsing/background.png",
    aus="results/{subject}/aus/aus.parquet",
    aus_stats="results/{subject}/aus/aus.json",
)


rule render_video:
    """Test split re-synthesised: stage-1 landmarks from its audio -> head, torso, composite; audio muxed."""
    input:
        **RENDER_SUBJECT_INPUTS,
        pred="results/{subject}/stage1/pred/self.parquet",
        features="results/{subject}/audio/self.npz",
        audio="results/{subject}/ingest/audio.wav",
        code=RENDER_CODE,
    output:
        video="results/{subject}/video.mp4",
        stats="results/{subject}/video.json",
    params:
        cfg=stage_config("render"),
    log:
        "logs/render_video/{subject}.log",
    conda:
        "../../envs/train.yaml"
    benchmark:
        "benchmarks/render_video/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpus("render"),
    shell:
        "python -m pipeline.render video --subject-dir results/{wildcards.subject} --out {output.video:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule drive_video:
    """Any data/audio/{clip}.wav: replayed (mirror-looped, smoothed) poses, sampled blinks, audio muxed."""
    input:
        **RENDER_SUBJECT_INPUTS,
        pred="results/{subject}/stage1/pred/{clip}.parquet",
        features="results/{subject}/audio/{clip}.npz",
        wav=f"{config['data_dir']}/audio/{{clip}}.wav",
        code=RENDER_CODE,
    output:
        video="results/{subject}/drive/{clip}.mp4",
        stats="results/{subject}/drive/{clip}.json",
    wildcard_constraints:
        clip="(?!self\\.)[A-Za-z0-9_-]+",  # not "self" (the lookahead sees the ".mp4" that follows)
    params:
        cfg=stage_config("render"),
    log:
        "logs/drive_video/{subject}/{clip}.log",
    conda:
        "../../envs/train.yaml"
    benchmark:
        "benchmarks/drive_video/{subject}/{clip}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpus("render"),
    shell:
        "python -m pipeline.render drive --subject-dir results/{wildcards.subject} --clip {wildcards.clip}"
        " --wav {input.wav:q} --out {output.video:q} --config {params.cfg:q} > {log:q} 2>&1"
