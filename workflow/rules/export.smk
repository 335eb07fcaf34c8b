# Export of a processed subject in the ER-NeRF / TalkingGaussian dataset layout (pipeline/export/ernerf.py,
# docs/export.md):
#   results/{subject}/export/ernerf/   ori_imgs/, gt_imgs/, parsing/, torso_imgs/, bc.jpg, transforms_{train,val}.json,
#                                      au.csv, aud.wav, aud_ours.npy (+ aud_hu.npy with a HuBERT-large encoder)
#   results/{subject}/export/ernerf.json  counts, scale, timing (outside the folder: ER-NeRF globs *.json in it)
# Not part of `rule all`: ask for it, e.g. `snakemake results/alice/export/ernerf.json --cores 4`.


rule export_ernerf:
    """ER-NeRF / TalkingGaussian dataset folder from our crop, landmarks, tracking, parsing, AUs and audio."""
    input:
        video="results/{subject}/crop/video.mp4",
        meta="results/{subject}/ingest/meta.json",
        wav="results/{subject}/ingest/audio.wav",
        landmarks="results/{subject}/landmarks/landmarks.parquet",
        transforms="results/{subject}/tracking/transforms.json",
        face_model="results/{subject}/tracking/face_model.npz",
        labels="results/{subject}/parsing/labels.npz",
        torso="results/{subject}/parsing/torso.npz",
        background="results/{subject}/parsing/background.png",
        audio="results/{subject}/audio/self.npz",
        aus="results/{subject}/aus/aus.parquet",
        code=code("export/ernerf", "preprocess/au_signals", "core/media"),
    output:
        folder=directory("results/{subject}/export/ernerf"),
        stats="results/{subject}/export/ernerf.json",
    params:
        cfg=stage_config("export"),
    log:
        "logs/export_ernerf/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/export_ernerf/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.export.ernerf --subject-dir results/{wildcards.subject} --outdir {output.folder:q}"
        " --stats {output.stats:q} --config {params.cfg:q} > {log:q} 2>&1"
