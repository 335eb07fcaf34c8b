# Export of a processed subject in the ER-NeRF / TalkingGaussian dataset layout (pipeline/export/ernerf.py,
# docs/export.md):
#   results/{subject}/export/ernerf/   ori_imgs/, gt_imgs/, parsing/, torso_imgs/, bc.jpg, transforms_{train,val}.json,
#                                      au.csv, aud.wav, aud_ours.npy (+ aud_hu.npy with a HuBERT-large encoder)
#   results/{subject}/export/ernerf.json  counts, scale, timing (outside the folder: ER-NeRF globs *.json in it)
# Not part of `rule all`: ask for it, e.g. `snakemake results/alice/export/ernerf.json --cores 4`.


rule export_ernerf:
    """ER-NeRF / TalkingGaussian dataset folder from our crop, landmarks, tracking, parsing, AUs and audio."""
    input:
        video=S.crop.video,
        meta=S.ingest.meta,
        wav=S.sync.audio,
        landmarks=S.landmarks.table,
        transforms=S.tracking.transforms,
        face_model=S.tracking.face_model,
        labels=S.parsing.labels,
        torso=S.parsing.torso,
        background=S.parsing.background,
        audio=S.audio.features(),
        aus=S.aus.table,
        code=code("export/ernerf", "preprocess/au_signals", "core/media"),
    output:
        folder=directory(S.export.ernerf),
        stats=S.export.ernerf_stats,
    params:
        cfg=stage_config("export"),
        subject_dir=subject_dir,
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
        "python -m pipeline.export.ernerf --subject-dir {params.subject_dir:q} --outdir {output.folder:q}"
        " --stats {output.stats:q} --config {params.cfg:q} > {log:q} 2>&1"
