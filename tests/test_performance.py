"""The GPU speed options (issue 8) as a callback: what each one changes on the model, and what it refuses."""

from __future__ import annotations

import pytest
import torch

from lit_score.callbacks import Performance
from lit_score.models import DDPM, EBM
from lit_score.networks import UNet
from lit_score.networks.energy import EnergyMLP


def small_unet() -> UNet:
    return UNet(1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), resolution=8)


def test_channels_last_and_compile_change_memory_layout_and_call_not_the_checkpoint():
    model = DDPM(small_unet(), sample_shape=(1, 8, 8))
    keys = list(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    before = model.network(x, torch.tensor([3.0, 7.0])).detach()
    Performance(tf32=False, channels_last=True, compile=True).setup(None, model, "fit")
    conv = model.network.down[0].res.conv1.weight  # 8 -> 8 channels (with one, both layouts coincide)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert model.network._compiled_call_impl is not None  # nn.Module.compile: compiled in place
    assert list(model.state_dict()) == keys  # no "_orig_mod." prefix: checkpoints load either way
    model.network._compiled_call_impl = None  # (compiling for real costs a minute on CPU: checked in the benchmark)
    torch.testing.assert_close(model.network(x, torch.tensor([3.0, 7.0])), before, rtol=1e-5, atol=1e-5)


def test_compile_is_refused_for_energies_and_compile_mode_needs_compile():
    ebm = EBM(EnergyMLP(2, hidden=8, depth=1), sample_shape=(2,))
    with pytest.raises(ValueError, match="double backward"):
        Performance(compile=True).setup(None, ebm, "fit")
    Performance(channels_last=True).setup(None, ebm, "fit")  # the other options apply
    with pytest.raises(ValueError, match="compile_mode applies with compile true"):
        Performance(compile_mode="max-autotune")
