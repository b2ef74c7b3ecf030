"""MODA's tools around the model: the `moda describe` command line, distillation, the bundled demo and metrics.

The model itself is `modeling_moda` and its inputs come from `processing`; nothing here is needed to load a
checkpoint.
"""
