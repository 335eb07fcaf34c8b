"""``python -m pipeline.render video|drive|mux ...``: the CLI of :mod:`pipeline.render.video`."""

from pipeline.render.video import main

main()
