"""Checkpoints written before the application floor was reorganised (issue 24) still load, as the class that wrote
them, and give the same samples: the fixtures under tests/fixtures/pre_redesign were made at commit c42f2d2 by
``python tests/fixtures/pre_redesign/make.py`` (toy configs, 3 training steps, optimizer state dropped)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lit_score.cli import load_model

HERE = Path(__file__).resolve().parent / "fixtures" / "pre_redesign"
_spec = importlib.util.spec_from_file_location("make_pre_redesign", HERE / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


def test_every_family_has_a_fixture():
    assert sorted(p.stem for p in HERE.glob("*.ckpt")) == sorted(make.CONFIGS)


@pytest.mark.parametrize("name", sorted(make.CONFIGS))
def test_a_pre_redesign_checkpoint_loads_and_samples_identically(name):
    model = load_model(HERE / f"{name}.ckpt").eval()
    expected = torch.load(HERE / f"{name}.samples.pt", weights_only=True)
    class_path = torch.load(HERE / f"{name}.ckpt", weights_only=True)["hyper_parameters"]["_class_path"]
    assert type(model).__name__ == class_path.rpartition(".")[2]
    # float32 sums depend on the thread count (the fixtures were made with 2 threads; one thread differs by one ulp
    # in the classifier's logits), so equality is to a few ulps of float32, far below any behaviour change
    torch.testing.assert_close(make.sample_record(model), expected, rtol=1e-5, atol=1e-6)
