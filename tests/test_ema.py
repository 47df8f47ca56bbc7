"""lit_score.callbacks.EMA: the warm-up schedules against their sources, the average against one computed here from
the recorded training weights, and what the checkpoint keeps."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lit_score.callbacks import EMA, ema_decay
from lit_score.data import Toy2D
from lit_score.models import DDPM
from lit_score.networks import MLP
from lit_score.processes import DiscreteVP


def test_score_sde_warmup_is_tensorflows_num_updates_rule():
    # score_sde / TF ExponentialMovingAverage: decay_n = min(decay, (1 + n) / (10 + n))
    assert ema_decay(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay(90, 0.999) == pytest.approx(0.91)
    assert ema_decay(8990, 0.999) == pytest.approx(0.999)  # (1 + n)/(10 + n) = 0.999 exactly at n = 8990
    assert ema_decay(10**6, 0.999) == 0.999
    assert ema_decay(10**6, 0.999, "none") == ema_decay(1, 0.999, "none") == 0.999


def test_power_warmup_reaches_k_diffusions_stated_decays():
    # k-diffusion's EMAWarmup docstring: inv_gamma 1, power 2/3 reaches 0.999 at 31.6K steps and 0.9999 at 1M;
    # power 3/4 reaches 0.999 at 10K and 0.9999 at 215.4K
    assert ema_decay(31_623, 1.0, "power", power=2 / 3) == pytest.approx(0.999, abs=5e-8)
    assert ema_decay(10**6, 1.0, "power", power=2 / 3) == pytest.approx(0.9999, abs=1e-9)
    assert ema_decay(10**4, 1.0, "power", power=3 / 4) == pytest.approx(0.999, abs=1e-7)
    assert ema_decay(215_443, 1.0, "power", power=3 / 4) == pytest.approx(0.9999, abs=1e-9)
    assert ema_decay(10**6, 0.999, "power") == 0.999  # the ceiling
    assert ema_decay(1, 0.999, "power", min_decay=0.5) == 0.5  # the floor


@pytest.mark.parametrize("bad", [{"warmup": "linear"}, {"decay": 1.5}, {"power": 0.0}, {"inv_gamma": -1.0}])
def test_bad_settings_are_refused_at_construction(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        EMA(**bad)


def _fit(tmp_path, ema, steps=12, **trainer_kwargs):
    """A 12-step toy DDPM fit with ``ema``: (model, the training weights after each step, last.ckpt, trainer)."""
    torch.manual_seed(0)
    model = DDPM(network=MLP(data_dim=2, hidden=16, depth=2), process=DiscreteVP(num_timesteps=20),
                 sample_shape=(2,), optimizer=lambda params: torch.optim.SGD(params, lr=0.2))
    raw = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):
            raw.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer_kwargs = {"limit_val_batches": 0, **trainer_kwargs}
    trainer = pl.Trainer(max_steps=steps, callbacks=[Record(), ema, ckpt], logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    trainer.fit(model, datamodule=Toy2D(num_samples=400, batch_size=50))
    return model, raw, torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False), trainer


@pytest.mark.parametrize("warmup", ["score_sde", "power", "none"])
def test_the_average_is_the_warmed_up_ema_of_the_training_weights(tmp_path, warmup):
    ema = EMA(decay=0.8, warmup=warmup, power=0.75)
    model, raw, ckpt, _ = _fit(tmp_path, ema)
    # θ̄_0 = θ_0; θ̄_n = β_n θ̄_{n−1} + (1 − β_n) θ_n, with β_n written out per source
    beta = {"score_sde": lambda n: min(0.8, (1 + n) / (10 + n)),
            "power": lambda n: min(0.8, 1 - (1 + n) ** -0.75),
            "none": lambda n: 0.8}[warmup]
    expected = dict(raw[0])
    for n, weights in enumerate(raw[1:], start=1):
        expected = {k: beta(n) * expected[k] + (1 - beta(n)) * weights[k] for k in expected}
    assert len(raw) == 12 and int(ckpt["averaging_state"]["n_averaged"]) == 12
    for k, v in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][k], v)  # the checkpoint's weights are the average ...
        torch.testing.assert_close(ckpt["current_model_state"][k], raw[-1][k])  # ... beside the training ones
        torch.testing.assert_close(model.state_dict()[k], v)  # and the model ends with the average


def test_a_checkpoint_written_after_fit_keeps_the_training_weights(tmp_path):
    # Lightning copies the average into the model at on_train_end; ModelCheckpoint's own save_last runs after that
    # (when it has not saved one yet: e.g. it checkpoints on a validation that never ran) and so does a user's
    # trainer.save_checkpoint: both wrote the average under state_dict *and* current_model_state (issue 23's
    # last.ckpt, whose --weights raw evaluated the EMA)
    # ModelCheckpoint saves on validation, which never runs here: its save_last comes at on_train_end
    model, raw, _, trainer = _fit(tmp_path, EMA(decay=0.8), steps=6, check_val_every_n_epoch=1000,
                                  limit_val_batches=1, num_sanity_val_steps=0)
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    average = model.state_dict()  # the model ends with the average
    assert any(not torch.equal(average[k], raw[-1][k]) for k in average)  # which differs from the training weights
    for name in ("last.ckpt", "after.ckpt"):
        saved = torch.load(tmp_path / name, map_location="cpu", weights_only=False)
        assert saved["global_step"] == 6
        for k, v in average.items():
            torch.testing.assert_close(saved["state_dict"][k], v)
            torch.testing.assert_close(saved["current_model_state"][k], raw[-1][k])
