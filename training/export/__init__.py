"""Export step: Triton model repositories for the `qanchor` model (and the event `text_encoder`).

`python -m training.export --help`; the serving core the Triton model runs is `training.export.runtime`.
"""
