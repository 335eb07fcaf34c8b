# Stage 1 (pipeline/stage1/): audio features -> per-frame pose-free landmarks (GtsTalkNeRF's audio-to-landmark
# Transformer).
# With stage1.pretrain: true, one pretrain job over every subject feeds each subject's fine-tune.

STAGE1_CODE = code("stage1/model", "stage1/data", "stage1/fit", "stage1/io", "stage1/train")

rule pretrain_audio2lmk:
    """One stage-1 model over the train splits of all subjects (targets: offsets from each subject's mean)."""
    input:
        features=expand(S.audio.features(), subject=SUBJECTS),
        canonical=expand(S.tracking.canonical, subject=SUBJECTS),
        transforms=expand(S.tracking.transforms, subject=SUBJECTS),
        code=STAGE1_CODE,
    output:
        model=RESULTS.pretrain.model,
        basis=RESULTS.pretrain.basis,
        meta=RESULTS.pretrain.meta,
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
        features=S.audio.features(),
        canonical=S.tracking.canonical,
        transforms=S.tracking.transforms,
        pretrained=stage1_pretrained,
        code=STAGE1_CODE,
    output:
        model=S.stage1.model,
        basis=S.stage1.basis,
        meta=S.stage1.meta,
        metrics=S.stage1.metrics,
        pred=S.stage1.pred(),
        plot=report(S.stage1.mouth_plot, category="Stage 1", subcategory="{subject}"),
    params:
        cfg=stage_config("stage1"),
        outdir=stage_dir("stage1"),
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
        "python -m pipeline.stage1.train --outdir {params.outdir:q} --features {input.features:q}"
        " --canonical {input.canonical:q} --transforms {input.transforms:q} {params.pre} --config {params.cfg:q}"
        " > {log:q} 2>&1"


rule oof_audio2lmk:
    """Out-of-fold stage-1 landmarks of the subject's own audio: the train split in 4 folds, each predicted by a fit
    on the others (read by train_head with stage2.train_mouth: stage1)."""
    input:
        features=S.audio.features(),
        canonical=S.tracking.canonical,
        transforms=S.tracking.transforms,
        code=code("stage1/oof", "stage1/fit", "stage1/data", "stage1/io", "stage1/model"),
    output:
        S.stage1.oof,
    params:
        cfg=stage_config("stage1"),
    log:
        "logs/oof_audio2lmk/{subject}.log",
    conda:
        "../../envs/train.yaml"
    benchmark:
        "benchmarks/oof_audio2lmk/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m pipeline.stage1.oof --features {input.features:q} --canonical {input.canonical:q}"
        " --transforms {input.transforms:q} --out {output:q} --config {params.cfg:q} > {log:q} 2>&1"


rule predict_landmarks:
    """Stage-1 landmarks for a driving clip's audio features."""
    input:
        features=S.audio.features("{clip}"),
        model=S.stage1.model,
        meta=S.stage1.meta,
        code=code("stage1/predict", "stage1/io", "stage1/data", "stage1/model"),
    output:
        S.stage1.pred("{clip}"),
    wildcard_constraints:
        clip="(?!self\\.)[A-Za-z0-9_-]+",  # regex inside the output pattern: "self" is the subject's own audio
    params:
        model_dir=stage_dir("stage1"),
    log:
        "logs/predict_landmarks/{subject}/{clip}.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.stage1.predict --features {input.features:q} --model-dir {params.model_dir:q}"
        " --out {output:q} > {log:q} 2>&1"
