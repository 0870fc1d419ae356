"""Framework integrations, each an optional import of its framework:

- ``gradscope.integrations.lightning.GradscopeCallback`` (PyTorch Lightning),
- ``gradscope.integrations.huggingface.GradscopeTrainerCallback`` (transformers' Trainer).

Both create a monitor when training starts, end each monitored step where the framework has
unscaled and accumulated the gradients, right before the optimizer step, and stop the monitor when
training ends. ``callback.monitor`` is the ``gradscope.Monitor`` (its history, findings, reports).
"""
