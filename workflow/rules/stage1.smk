# Stage 1: audio features -> per-frame pose-free landmarks (GtsTalkNeRF's audio-to-landmark Transformer).
# With stage1.pretrain: true, one pretrain job over every subject feeds each subject's fine-tune.

STAGE1_CODE = code("stage1/model", "stage1/data", "stage1/fit", "stage1/io", "stage1/train")

rule pretrain_audio2lmk:
    """One stage-1 model over the train splits of all subjects (targets: offsets from each subject's mean)."""
    input:
        features=expand("results/{subject}/audio/self.npz", subject=SUBJECTS),
        canonical=expand("results/{subject}/tracking/canonical.npz", subject=SUBJECTS),
        transforms=expand("results/{subject}/tracking/transforms.json", subject=SUBJECTS),
        code=STAGE1_CODE,
    output:
        model=f"{PRETRAIN_DIR}/model.pt",
        basis=f"{PRETRAIN_DIR}/basis.npz",
        meta=f"{PRETRAIN_DIR}/model.json",
    params:
        cfg=stage_config("stage1"),
        outdir=lambda wc, output: os.path.dirname(output.model),
    log:
        "logs/pretrain_audio2lmk/all.log",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m pipeline.stage1.train --pretrain --outdir {params.outdir:q} --features {input.features:q}"
        " --canonical {input.canonical:q} --transforms {input.transforms:q} --config {params.cfg:q} > {log:q} 2>&1"


rule train_audio2lmk:
    """Per-subject stage-1 training (fine-tuning when pre-trained), test-split metrics and predictions."""
    input:
        features="results/{subject}/audio/self.npz",
        canonical="results/{subject}/tracking/canonical.npz",
        transforms="results/{subject}/tracking/transforms.json",
        pretrained=stage1_pretrained,
        code=STAGE1_CODE,
    output:
        model="results/{subject}/stage1/model.pt",
        basis="results/{subject}/stage1/basis.npz",
        meta="results/{subject}/stage1/model.json",
        metrics="results/{subject}/stage1/metrics.json",
        pred="results/{subject}/stage1/pred/self.parquet",
        plot=report("results/{subject}/stage1/mouth_test.png", category="Stage 1", subcategory="{subject}"),
    params:
        cfg=stage_config("stage1"),
        pre=lambda wc, input: f"--pretrained {os.path.dirname(input.pretrained)}" if input.pretrained else "",
    log:
        "logs/train_audio2lmk/{subject}.log",
    conda:
        "../../envs/train.yaml"
    benchmark:
        "benchmarks/train_audio2lmk/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m pipeline.stage1.train --outdir results/{wildcards.subject}/stage1 --features {input.features:q}"
        " --canonical {input.canonical:q} --transforms {input.transforms:q} {params.pre} --config {params.cfg:q}"
        " > {log:q} 2>&1"


rule predict_landmarks:
    """Stage-1 landmarks for a driving clip's audio features."""
    input:
        features="results/{subject}/audio/{clip}.npz",
        model="results/{subject}/stage1/model.pt",
        meta="results/{subject}/stage1/model.json",
        code=code("stage1/predict", "stage1/io", "stage1/data", "stage1/model"),
    output:
        "results/{subject}/stage1/pred/{clip}.parquet",
    wildcard_constraints:
        clip="(?!self\\.)[A-Za-z0-9_-]+",  # regex inside the output pattern: "self" is the subject's own audio
    log:
        "logs/predict_landmarks/{subject}/{clip}.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.stage1.predict --features {input.features:q} --model-dir results/{wildcards.subject}/stage1"
        " --out {output:q} > {log:q} 2>&1"
