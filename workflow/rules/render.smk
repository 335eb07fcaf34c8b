# The final videos (pipeline/render/: video.py the rules, head, compositing, motion; the torso model from torso.smk):
#   results/{subject}/video.mp4 (+ video.json)          test split, re-synthesised from its own audio
#   results/{subject}/drive/{clip}.mp4 (+ {clip}.json)  any data/audio/{clip}.wav
# Frame synthesis needs torch/numpy/opencv only; to render on a GPU machine without ffmpeg, call
# `python -m pipeline.render video --out X.frames.npz ...` there and `python -m pipeline.render mux` here.


RENDER_CODE = code("render/__main__", "render/video", "render/compositing", "render/motion", "render/head",
                   "render/replay", "torso/model", "core/media", "stage2/data") + HEAD_CODE

RENDER_SUBJECT_INPUTS = dict(
    head=S.stage2.head_meta,
    weights=S.stage2.head,
    occupancy=S.stage2.occupancy,
    torso=S.torso.model,
    torso_meta=S.torso.meta,
    transforms=S.tracking.transforms,
    tracks=S.tracking.tracks,
    background=S.parsing.background,
    aus=S.aus.table,
    aus_stats=S.aus.stats,
)


rule render_video:
    """Test split re-synthesised: stage-1 landmarks from its audio -> head, torso, composite; audio muxed."""
    input:
        **RENDER_SUBJECT_INPUTS,
        pred=S.stage1.pred(),
        features=S.audio.features(),
        audio=S.sync.audio,
        code=RENDER_CODE,
    output:
        video=S.video,
        stats=S.video_stats,
    params:
        cfg=stage_config("render"),
        subject_dir=subject_dir,
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
        "python -m pipeline.render video --subject-dir {params.subject_dir:q} --out {output.video:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule drive_video:
    """Any data/audio/{clip}.wav: replayed (mirror-looped, smoothed) poses and their recorded torso, sampled blinks, audio muxed."""
    input:
        **RENDER_SUBJECT_INPUTS,
        pred=S.stage1.pred("{clip}"),
        features=S.audio.features("{clip}"),
        wav=f"{config['data_dir']}/audio/{{clip}}.wav",
        crop=S.crop.video,              # render.drive_torso: replay (the recorded torso of the replayed frames)
        matte=S.parsing.torso,
        code=RENDER_CODE,
    output:
        video=S.drive("{clip}"),
        stats=S.drive_stats("{clip}"),
    wildcard_constraints:
        clip="(?!self\\.)[A-Za-z0-9_-]+",  # not "self" (the lookahead sees the ".mp4" that follows)
    params:
        cfg=stage_config("render"),
        subject_dir=subject_dir,
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
        "python -m pipeline.render drive --subject-dir {params.subject_dir:q} --clip {wildcards.clip}"
        " --wav {input.wav:q} --out {output.video:q} --config {params.cfg:q} > {log:q} 2>&1"
