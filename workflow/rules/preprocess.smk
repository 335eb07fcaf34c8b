# Preprocessing of a subject's clip: ingest -> crop -> landmarks -> tracking -> parsing.


rule ingest_video:
    """Any clip -> 25 fps constant video, 16 kHz mono audio, meta.json (split, offsets, sha256)."""
    input:
        video=source_video,
        code=code("ingest", "media"),
    output:
        video="results/{subject}/ingest/video.mp4",
        audio="results/{subject}/ingest/audio.wav",
        meta="results/{subject}/ingest/meta.json",
    params:
        cfg=lambda wc: stage_config("ingest"),
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
        "python -m pipeline.ingest --video {input.video:q} --outdir results/{wildcards.subject}/ingest"
        " --config {params.cfg:q} > {log:q} 2>&1"


rule demo_video:
    """The built-in demo subject (astronaut photo + synthesised speech): needs nothing downloaded."""
    output:
        f"{config['data_dir']}/demo/demo.mp4",
    log:
        "logs/demo_video/demo.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m pipeline.demo --out {output:q} > {log:q} 2>&1"
