# Evaluation of the rendered test split (pipeline/evaluate/subject.py) and the benchmark table over subjects
# (pipeline/evaluate/table.py).
#   results/{subject}/eval/{metrics.json,frames.parquet,plots/*.png}
#   results/benchmark.{md,csv}     one row per subject (config benchmark_subjects, empty = every subject)
# Outputs marked report() appear in `snakemake --report report.html` (captions in workflow/report/).

EVAL_CODE = code("evaluate/subject", "evaluate/plots", "evaluate/dlib68", "core/metrics", "core/sync_detector",
                 "core/media", "preprocess/face_landmarker", "preprocess/mediapipe_models", "preprocess/au_signals")


rule evaluate:
    """Render vs ground truth on the test split: PSNR/SSIM (full, head), LPIPS if local, mouth LMD (mesh, dlib-68),
    AU45 blinks, lip-audio offset, render FPS, train time; plots."""
    input:
        video=S.video,
        stats=S.video_stats,
        meta=S.ingest.meta,
        crop=S.crop.video,
        crop_meta=S.crop.meta,
        labels=S.parsing.labels,
        landmarks=S.landmarks.table,
        tracks=S.tracking.tracks,
        aus=S.aus.table,
        aus_stats=S.aus.stats,
        train=[S.stage1.metrics, S.stage2.metrics, S.torso.metrics],
        code=EVAL_CODE,
    output:
        metrics=report(S.eval.metrics, caption="../report/eval_metrics.rst",
                       category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "metrics"}),
        frames=S.eval.frames,
        psnr=report(S.eval.plot("psnr"), caption="../report/eval_psnr.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "psnr"}),
        mouth=report(S.eval.plot("mouth"), caption="../report/eval_mouth.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "mouth"}),
        pose=report(S.eval.plot("pose"), caption="../report/eval_pose.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "pose"}),
        strip=report(S.eval.plot("strip"), caption="../report/eval_strip.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "strip"}),
    params:
        cfg=stage_config("evaluate"),
        subject_dir=subject_dir,
        outdir=stage_dir("eval"),
    log:
        "logs/evaluate/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/evaluate/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "python -m pipeline.evaluate.subject --subject-dir {params.subject_dir:q} --video {input.video:q}"
        " --outdir {params.outdir:q} --config {params.cfg:q} > {log:q} 2>&1"


rule benchmark_table:
    """One row per subject, as in the ER-NeRF / TalkingGaussian tables (markdown with notes, and CSV)."""
    input:
        metrics=benchmark_metrics,
        code=code("evaluate/table"),
    output:
        md=RESULTS.benchmark_md,
        csv=report(RESULTS.benchmark_csv, caption="../report/benchmark.rst", category="Benchmark"),
    log:
        "logs/benchmark_table/all.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m pipeline.evaluate.table --metrics {input.metrics:q} --md {output.md:q} --csv {output.csv:q}"
        " > {log:q} 2>&1"
