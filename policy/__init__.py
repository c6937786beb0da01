"""The generator: tokenizer, denoising policy model and sampling. Reads state dicts by name and shape only."""

from policy.model import DenoisingPolicy, PolicyConfig
from policy.sampling import Step, gaussian_kl, gaussian_log_prob, sample, walk
from policy.tokenizer import Layout, Tokenizer, fit_scales, permute_units

__all__ = ["DenoisingPolicy", "Layout", "PolicyConfig", "Step", "Tokenizer", "fit_scales", "gaussian_kl",
           "gaussian_log_prob", "permute_units", "sample", "walk"]
