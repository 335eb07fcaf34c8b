"""The final videos (workflow/rules/render.smk): rules ``render_video`` and ``drive_video`` (``video``).

Beside the rule module: ``head`` (the trained stage-2 head as the render sees it), ``compositing`` (head, torso
and background layers), ``motion`` (replayed poses and sampled blinks for a driving clip).
``python -m pipeline.render video|drive|mux ...`` runs :func:`pipeline.render.video.main`.
"""
