"""SampleGrid: EMA weights are the ones sampled, modes are restored, files land in the run directory."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from lit_score.callbacks import SampleGrid
from lit_score.data import Toy2D
from lit_score.models import DDPM
from lit_score.networks import MLP
from lit_score.processes import DiscreteVP
from lit_score.samplers import DDIM


class SpyDDIM(DDIM):
    """DDIM that records the weights and the train/eval mode of the model it samples."""

    def __init__(self) -> None:
        super().__init__(num_steps=3)
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def sample(self, score_fn, x, process, **kwargs):
        network = score_fn.score_fn.network
        self.seen.append((torch.cat([p.detach().flatten() for p in network.parameters()]).clone(), network.training))
        return super().sample(score_fn, x, process, **kwargs)


def test_sample_grid_uses_ema_weights_and_restores_train_mode(tmp_path):
    torch.manual_seed(0)
    spy = SpyDDIM()
    model = DDPM(network=MLP(data_dim=2, hidden=32, depth=2), process=DiscreteVP(num_timesteps=20), sample_shape=(2,),
                 optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    ema = EMAWeightAveraging(decay=0.5)
    grid = SampleGrid(num_samples=16, sampler=spy)
    # the grid callback is listed AFTER the EMA callback: the order that would break hook-based sampling
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=1, callbacks=[ema, grid],
                         default_root_dir=tmp_path, logger=False, enable_progress_bar=False, num_sanity_val_steps=0)
    raw_after_step = []

    class RawProbe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):
            raw_after_step.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone())

    trainer.callbacks.append(RawProbe())
    trainer.fit(model, datamodule=Toy2D(num_samples=400, batch_size=50))
    expected = raw_after_step[0]  # EMA with decay 0.5 computed independently: e_1 = p_1, e_k = ½ e_{k−1} + ½ p_k
    for p in raw_after_step[1:]:
        expected = 0.5 * expected + 0.5 * p
    sampled_weights, was_training = spy.seen[0]
    torch.testing.assert_close(sampled_weights, expected)  # the averaged weights, not the raw ones
    assert not torch.allclose(sampled_weights, raw_after_step[-1])
    assert not was_training  # sampling runs in eval mode ...
    assert model.training  # ... and the mode is restored afterwards
    raw = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (tmp_path / "samples" / "epoch=0000.png").is_file() and (tmp_path / "samples" / "final.png").is_file()
    # at the end of fit EMA copies its weights into the module: the final grid samples those
    torch.testing.assert_close(spy.seen[-1][0], raw)
    torch.testing.assert_close(raw, expected)
