# Talking-head pipeline: data/<s>/<s>.mp4 -> results/<s>/... (see docs/ and ../shared/DESIGN.md §1).
# Thin on purpose: configuration, validation, the rule files, and the default target.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: workflow.source_path("config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    subject=SUBJECT_PATTERN,



include: "workflow/rules/preprocess.smk"
include: "workflow/rules/audio.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/torso.smk"
include: "workflow/rules/render.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        final_targets,
