"""Speed options of the training step that a GPU user expects, as one callback (issue 8).

    trainer:
      callbacks:
        - class_path: lit_score.callbacks.Performance
          init_args: {channels_last: true, compile: true, tf32: true}

| option | what it does (where it pays) |
|---|---|
| ``tf32`` | TF32 matmuls / convolutions: ``set_float32_matmul_precision("high")``, cuDNN TF32 (Ampere+ GPUs, fp32) |
| ``channels_last`` | 4-D parameters in NHWC; activations follow through the convolutions (U-Nets on GPU, AMP) |
| ``compile`` | ``torch.compile`` of the network in place (``nn.Module.compile``: names and checkpoints unchanged) |

Fused Adam is an optimizer argument (``--model.init_args.optimizer.init_args.fused true``) and pinned host memory is
chosen by the data modules whenever CUDA is available. The options are run settings, not model settings: they change
no hyper-parameter and no checkpoint, and a resumed run may add or drop them. ``compile`` is refused for a model that
differentiates through its network twice (energies: an EBM, a ``NoiseConditionalEnergy``), which torch.compile does not
support. ``benchmarks/throughput.py`` measures what each option buys.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class Performance(pl.Callback):
    """Apply TF32, channels-last and ``torch.compile`` to the model at ``setup`` (see the module docstring).

    Args:
        tf32: allow TF32 matmuls / convolutions (no effect on CPU).
        channels_last: put 4-D parameters in channels-last memory format.
        compile: compile the model's network (``GenerativeModule.network``) in place.
        compile_mode: ``torch.compile``'s mode (None: default; "max-autotune", "reduce-overhead", …).
    """

    def __init__(self, tf32: bool = True, channels_last: bool = False, compile: bool = False,
                 compile_mode: str | None = None) -> None:
        if compile_mode is not None and not compile:
            raise ValueError("compile_mode applies with compile true")
        self.tf32, self.channels_last, self.compile, self.compile_mode = tf32, channels_last, compile, compile_mode
        self._applied = False

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self._applied:
            return
        if self.compile and pl_module.has_energy:
            raise ValueError(f"compile cannot be used with {type(pl_module).__name__}'s energy network: its score is a"
                             " gradient of the network, and torch.compile does not support the double backward"
                             " training takes; drop compile (channels_last and tf32 still apply)")
        if self.tf32:
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)  # only 4-D tensors change
        if self.compile:
            kwargs = {} if self.compile_mode is None else {"mode": self.compile_mode}
            pl_module.network.compile(**kwargs)
        self._applied = True

    def state_dict(self) -> dict:
        return {}


__all__ = ["Performance"]
