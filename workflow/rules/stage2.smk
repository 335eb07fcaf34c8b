# Stage 2: the landmark-conditioned head (pipeline/stage2/; docs/stage2.md): the NeRF (pipeline/stage2/nerf/) or,
# with stage2.head: gaussians, the Gaussian-splatting head (pipeline/stage2/gaussians/; docs/gaussians.md).
# cache_frames runs on the CPU side (ffmpeg); train_head needs only torch, numpy, pandas, pyarrow, opencv
# and re-running it resumes from results/{subject}/stage2/checkpoint.pt.

# the head NeRF (also rendered by render.smk), its fast kernels included (imported on CUDA machines)
NERF_CODE = code("stage2/nerf/hash_grid", "stage2/nerf/encoding", "stage2/nerf/field", "stage2/nerf/occupancy",
                 "stage2/nerf/renderer", "stage2/regions", "stage2/nerf/kernels/hash_grid_triton",
                 "stage2/nerf/kernels/hash_grid_triton_kernels", "stage2/nerf/kernels/hash_grid_tcnn",
                 "stage2/nerf/kernels/landmark_triton", "stage2/nerf/kernels/landmark_triton_kernels")
# the Gaussian-splatting head (stage2.head: gaussians), its rasteriser's torch reference included
GAUSSIAN_CODE = code("stage2/gaussians/projection", "stage2/gaussians/rasterize", "stage2/gaussians/backend",
                     "stage2/gaussians/model", "stage2/gaussians/init", "stage2/gaussians/density",
                     "stage2/gaussians/trainer", "stage2/regions", "stage2/nerf/field", "stage2/nerf/occupancy",
                     "stage2/nerf/kernels/landmark_triton", "stage2/nerf/kernels/landmark_triton_kernels")
# only the configured head's code and settings are inputs: editing the other head's re-runs nothing
GAUSSIAN_HEAD = config.get("stage2", {}).get("head", "nerf") == "gaussians"
HEAD_CODE = GAUSSIAN_CODE if GAUSSIAN_HEAD else NERF_CODE
STAGE2_CODE = HEAD_CODE + code("stage2/data", "stage2/sampling", "stage2/losses", "stage2/checkpoint",
                               "stage2/evaluate", "stage2/loop", "stage2/train")


rule cache_frames:
    """Crop video and label maps -> uint8 .npy caches at stage2.image_size (memory-mapped by train_head)."""
    input:
        video=S.crop.video,
        labels=S.parsing.labels,
        code=code("stage2/cache", "core/media"),
    output:
        frames=S.stage2.frames,
        labels=S.stage2.labels,
        meta=S.stage2.cache,
    params:
        cfg=json.dumps({"image_size": config.get("stage2", {}).get("image_size", 0)}),  # the only key it uses
        outdir=stage_dir("stage2"),
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
        " --outdir {params.outdir:q} --config {params.cfg:q} > {log:q} 2>&1"


rule train_head:
    """Head (NeRF or Gaussians) of one subject: checkpoints + resume, test-split head PSNR/SSIM vs the plate."""
    input:
        frames=S.stage2.frames,
        labels=S.stage2.labels,
        cache=S.stage2.cache,
        transforms=S.tracking.transforms,
        canonical=S.tracking.canonical,
        plate=S.parsing.background,
        audio=S.audio.features(),
        aus=S.aus.table,
        meta=S.ingest.meta,
        oof=stage1_oof,
        code=STAGE2_CODE,
    output:
        head=S.stage2.head,
        head_meta=S.stage2.head_meta,
        occupancy=S.stage2.occupancy,
        metrics=S.stage2.metrics,
        strip=report(S.stage2.strip, category="Stage 2", subcategory="{subject}"),
    params:
        cfg=stage_config("stage2", drop=() if GAUSSIAN_HEAD else ("gaussians",)),
        subject_dir=subject_dir,
        outdir=stage_dir("stage2"),
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
        "python -m pipeline.stage2.train --subject-dir {params.subject_dir:q}"
        " --outdir {params.outdir:q} --config {params.cfg:q} >> {log:q} 2>&1"
