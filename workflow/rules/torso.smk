# The torso model (pipeline/torso/: train.py the rule, model.py the network the render loads):
#   results/{subject}/torso/{torso.pt,torso.json,metrics.json}


rule train_torso:
    """Pose-modulated U-Net: head pose -> full-size torso+neck RGBA (trained on the parsing mattes); test PSNR vs mean torso."""
    input:
        video=S.crop.video,
        torso=S.parsing.torso,
        labels=S.parsing.labels,
        background=S.parsing.background,
        tracks=S.tracking.tracks,
        transforms=S.tracking.transforms,
        crop_meta=S.crop.meta,
        code=code("torso/train", "torso/model"),
    output:
        model=S.torso.model,
        meta=S.torso.meta,
        metrics=S.torso.metrics,
    params:
        cfg=stage_config("torso"),
        outdir=stage_dir("torso"),
    log:
        "logs/train_torso/{subject}.log",
    conda:
        "../../envs/train.yaml"
    benchmark:
        "benchmarks/train_torso/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpus("torso"),
    shell:
        "python -m pipeline.torso.train --crop-video {input.video:q} --torso {input.torso:q} --labels {input.labels:q}"
        " --background {input.background:q} --tracks {input.tracks:q} --transforms {input.transforms:q}"
        " --crop-meta {input.crop_meta:q} --outdir {params.outdir:q}"
        " --config {params.cfg:q} > {log:q} 2>&1"
