# Stage 2: the landmark-conditioned head NeRF (pipeline/stage2/, the head in pipeline/stage2/nerf/; docs/stage2.md).
# cache_frames runs on the CPU side (ffmpeg); train_head needs only torch, numpy, pandas, pyarrow, opencv
# and re-running it resumes from results/{subject}/stage2/checkpoint.pt.

# the head NeRF (also rendered by render.smk), its fast kernels included (imported on CUDA machines)
NERF_CODE = code("stage2/nerf/hash_grid", "stage2/nerf/encoding", "stage2/nerf/field", "stage2/nerf/occupancy",
                 "stage2/nerf/renderer", "stage2/nerf/kernels/hash_grid_triton", "stage2/nerf/kernels/hash_grid_triton_kernels",
                 "stage2/nerf/kernels/hash_grid_tcnn", "stage2/nerf/kernels/landmark_triton",
                 "stage2/nerf/kernels/landmark_triton_kernels")
STAGE2_CODE = NERF_CODE + code("stage2/data", "stage2/sampling", "stage2/losses", "stage2/checkpoint", "stage2/evaluate",
                               "stage2/train")


rule cache_frames:
    """Crop video and label maps -> uint8 .npy caches at stage2.image_size (memory-mapped by train_head)."""
    input:
        video="results/{subject}/crop/video.mp4",
        labels="results/{subject}/parsing/labels.npz",
        code=code("stage2/cache", "core/media"),
    output:
        frames="results/{subject}/stage2/frames.npy",
        labels="results/{subject}/stage2/labels.npy",
        meta="results/{subject}/stage2/cache.json",
    params:
        cfg=json.dumps({"image_size": config.get("stage2", {}).get("image_size", 0)}),  # the only key it uses
    log:
        "logs/cache_frames/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    benchmark:
        "benchmarks/cache_frames/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "python -m pipeline.stage2.cache --video {input.video:q} --labels {input.labels:q}"
        " --outdir results/{wildcards.subject}/stage2 --config {params.cfg:q} > {log:q} 2>&1"


rule train_head:
    """Head NeRF of one subject: checkpoints + resume, test-split head PSNR/SSIM vs the background plate."""
    input:
        frames="results/{subject}/stage2/frames.npy",
        labels="results/{subject}/stage2/labels.npy",
        cache="results/{subject}/stage2/cache.json",
        transforms="results/{subject}/tracking/transforms.json",
        canonical="results/{subject}/tracking/canonical.npz",
        plate="results/{subject}/parsing/background.png",
        audio="results/{subject}/audio/self.npz",
        aus="results/{subject}/aus/aus.parquet",
        meta="results/{subject}/ingest/meta.json",
        code=STAGE2_CODE,
    output:
        head="results/{subject}/stage2/head.pt",
        head_meta="results/{subject}/stage2/head.json",
        occupancy="results/{subject}/stage2/occupancy.npz",
        metrics="results/{subject}/stage2/metrics.json",
        strip=report("results/{subject}/stage2/test_strip.png", category="Stage 2", subcategory="{subject}"),
    params:
        cfg=stage_config("stage2"),
    log:
        "logs/train_head/{subject}.log",
    conda:
        "../../envs/train.yaml"
    benchmark:
        "benchmarks/train_head/{subject}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
        gpu=gpus("stage2"),  # SLURM --gpus; none for CPU runs
    shell:
        "python -m pipeline.stage2.train --subject-dir results/{wildcards.subject}"
        " --outdir results/{wildcards.subject}/stage2 --config {params.cfg:q} >> {log:q} 2>&1"
