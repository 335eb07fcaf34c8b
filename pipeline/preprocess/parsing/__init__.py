"""Rule ``parse_faces`` (``parse``): per-frame labels, torso mattes and the background plate;
``geometry`` holds the mesh-based label geometry, ``background`` the plate accumulator."""
