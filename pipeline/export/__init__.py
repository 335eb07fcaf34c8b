"""Exports of a processed subject to other tools' dataset layouts (workflow/rules/export.smk): ``ernerf`` (rule
``export_ernerf``: the ER-NeRF / TalkingGaussian folder, docs/export.md)."""
