"""Rule ``track_face`` (``track``): per-subject face model, head pose, focal length and expressions;
``fit`` holds the model and the L-BFGS fit, ``plots`` the overlay and pose figures."""
