# Evaluation of the rendered test split (pipeline/evaluate/subject.py) and the benchmark table over subjects
# (pipeline/evaluate/table.py).
#   results/{subject}/eval/{metrics.json,frames.parquet,plots/*.png}
#   results/benchmark.{md,csv}     one row per subject (config benchmark_subjects, empty = every subject)
# Outputs marked report() appear in `snakemake --report report.html` (captions in workflow/report/).

EVAL_CODE = code("evaluate/subject", "evaluate/plots", "evaluate/dlib68", "core/metrics", "core/media",
                 "preprocess/face_landmarker", "preprocess/mediapipe_models", "preprocess/au_signals")


rule evaluate:
    """Render vs ground truth on the test split: PSNR/SSIM (full, head), LPIPS if local, mouth LMD (mesh, dlib-68),
    AU45 blinks, lip-audio offset, render FPS, train time; plots."""
    input:
        video="results/{subject}/video.mp4",
        stats="results/{subject}/video.json",
        meta="results/{subject}/ingest/meta.json",
        crop="results/{subject}/crop/video.mp4",
        crop_meta="results/{subject}/crop/crop.json",
        labels="results/{subject}/parsing/labels.npz",
        landmarks="results/{subject}/landmarks/landmarks.parquet",
        tracks="results/{subject}/tracking/tracks.parquet",
        aus="results/{subject}/aus/aus.parquet",
        aus_stats="results/{subject}/aus/aus.json",
        train=["results/{subject}/stage1/metrics.json", "results/{subject}/stage2/metrics.json",
               "results/{subject}/torso/metrics.json"],
        code=EVAL_CODE,
    output:
        metrics=report("results/{subject}/eval/metrics.json", caption="../report/eval_metrics.rst",
                       category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "metrics"}),
        frames="results/{subject}/eval/frames.parquet",
        psnr=report("results/{subject}/eval/plots/psnr.png", caption="../report/eval_psnr.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "psnr"}),
        mouth=report("results/{subject}/eval/plots/mouth.png", caption="../report/eval_mouth.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "mouth"}),
        pose=report("results/{subject}/eval/plots/pose.png", caption="../report/eval_pose.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "pose"}),
        strip=report("results/{subject}/eval/plots/strip.png", caption="../report/eval_strip.rst",
                    category="Evaluation", subcategory="{subject}", labels={"subject": "{subject}", "plot": "strip"}),
    params:
        cfg=stage_config("evaluate"),
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
        "python -m pipeline.evaluate.subject --subject-dir results/{wildcards.subject} --video {input.video:q}"
        " --outdir results/{wildcards.subject}/eval --config {params.cfg:q} > {log:q} 2>&1"


rule benchmark_table:
    """One row per subject, as in the ER-NeRF / TalkingGaussian tables (markdown with notes, and CSV)."""
    input:
        metrics=benchmark_metrics,
        code=code("evaluate/table"),
    output:
        md="results/benchmark.md",
        csv=report("results/benchmark.csv", caption="../report/benchmark.rst", category="Benchmark"),
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
