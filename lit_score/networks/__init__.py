"""Plain nn.Modules: time-conditioned MLP and U-Net, energy networks and time embeddings (no Lightning)."""

from lit_score.networks.embeddings import FourierEmbedding, SinusoidalEmbedding
from lit_score.networks.energy import EnergyCNN, EnergyMLP, NoiseConditionalEnergy
from lit_score.networks.mlp import MLP
from lit_score.networks.unet import UNet

__all__ = ["MLP", "EnergyCNN", "EnergyMLP", "FourierEmbedding", "NoiseConditionalEnergy", "SinusoidalEmbedding", "UNet"]
