"""What several stages share: artifact contracts and the layout of a subject's files, typed configs, media I/O,
metrics, errors, the CLI helper, device choice and the progress bar.

Nothing in here imports a stage; every stage imports from here. Importing the package imports nothing heavy.
"""
