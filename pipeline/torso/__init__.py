"""The torso (workflow/rules/torso.smk): rule ``train_torso`` (``train``) and the model it trains (``model``:
the pose-modulated U-Net, its loading for the render, its pose input)."""
