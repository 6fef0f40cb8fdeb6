"""tunerkit's built-in plugins, grouped by family.

- ``tuners``: what trains (lora and its variants, adapter, llamapro, full, galore, lisa, neftune)
- ``data``: how samples become batches (packing, padding-free rows, lazy tokenization)
- ``speed``: faster or leaner steps (fused kernels, regional compile, activation offload)
- ``parallel``: more than one GPU (DeepSpeed ZeRO, sequence parallelism)
- ``quant``: quantized base models
- ``observe``: watching rows as they run (experiment trackers: TensorBoard, MLflow, W&B)
- ``_helpers``: private code shared by several families

Each plugin is reached through the ``tunerkit.plugins`` entry-point group in pyproject.toml,
the same way a third-party plugin is.
"""
