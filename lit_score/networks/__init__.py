"""Plain nn.Modules: time-conditioned MLP and U-Net, energy networks and time embeddings (no Lightning)."""

from lit_score.networks.classifier import EncoderUNet
from lit_score.networks.embeddings import NULL_LABEL, FourierEmbedding, LabelEmbedding, SinusoidalEmbedding
from lit_score.networks.energy import EnergyCNN, EnergyMLP, NoiseConditionalEnergy
from lit_score.networks.mlp import MLP
from lit_score.networks.two_time import load_one_time_weights
from lit_score.networks.unet import UNet

__all__ = ["MLP", "NULL_LABEL", "EncoderUNet", "EnergyCNN", "EnergyMLP", "FourierEmbedding", "LabelEmbedding",
           "NoiseConditionalEnergy", "SinusoidalEmbedding", "UNet", "load_one_time_weights"]
