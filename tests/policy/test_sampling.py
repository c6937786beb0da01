import pytest
import torch
from torch.distributions import Normal, kl_divergence

from policy.sampling import gaussian_kl, gaussian_log_prob, sample


def blocks(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 7, generator=g)}


def test_log_prob_matches_torch_distributions_averaged_over_dims():
    x, mean = blocks(0), blocks(1)
    std = {"a": torch.tensor([0.5, 1.0, 2.0]), "b": torch.rand(3, 7) + 0.1}  # per-sample and per-dim stds
    got = gaussian_log_prob(x, mean, std)
    ref_a = Normal(mean["a"], std["a"].view(3, 1, 1)).log_prob(x["a"]).flatten(1).sum(1)
    ref_b = Normal(mean["b"], std["b"]).log_prob(x["b"]).sum(1)
    torch.testing.assert_close(got, (ref_a + ref_b) / (20 + 7))


def test_log_prob_of_the_mean_itself_takes_the_short_path_and_agrees():
    mean = blocks(1)
    std = {"a": torch.tensor([0.5, 1.0, 2.0]), "b": torch.rand(3, 7) + 0.1}
    ref = (Normal(mean["a"], std["a"].view(3, 1, 1)).log_prob(mean["a"]).flatten(1).sum(1)
           + Normal(mean["b"], std["b"]).log_prob(mean["b"]).sum(1)) / 27
    torch.testing.assert_close(gaussian_log_prob(dict(mean), mean, std), ref)  # the same tensors: no squared term
    torch.testing.assert_close(gaussian_log_prob({k: v.clone() for k, v in mean.items()}, mean, std), ref)


def test_kl_matches_torch_distributions_and_is_zero_for_equal_policies():
    mp, mq = blocks(0), blocks(1)
    sp = {"a": torch.tensor([0.5, 1.0, 2.0]), "b": torch.rand(3, 7) + 0.1}
    sq = {"a": torch.tensor([1.5, 0.3, 2.0]), "b": torch.rand(3, 7) + 0.1}
    got = gaussian_kl(mp, sp, mq, sq)
    ref = (kl_divergence(Normal(mp["a"], sp["a"].view(3, 1, 1)), Normal(mq["a"], sq["a"].view(3, 1, 1))).flatten(1).sum(1)
           + kl_divergence(Normal(mp["b"], sp["b"]), Normal(mq["b"], sq["b"])).sum(1)) / 27
    torch.testing.assert_close(got, ref)
    assert torch.equal(gaussian_kl(mp, sp, mp, sp), torch.zeros(3))


def test_sample_has_the_requested_moments():
    mean = {"a": torch.full((2, 20000), 3.0)}
    std = {"a": torch.tensor([0.5, 2.0])}
    x = sample(mean, std, torch.Generator().manual_seed(0))["a"]
    torch.testing.assert_close(x.mean(1), torch.tensor([3.0, 3.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(1), torch.tensor([0.5, 2.0]), atol=0.03, rtol=0)


def test_antithetic_pairs_mirror_their_noise_and_keep_the_moments():
    mean = {"a": torch.full((4, 20000), 3.0), "b": torch.zeros(4, 3, 2)}
    std = {"a": torch.tensor([0.5, 0.5, 2.0, 2.0]), "b": torch.ones(4)}
    x = sample(mean, std, torch.Generator().manual_seed(0), antithetic=True)
    torch.testing.assert_close(x["a"][0] - 3.0, -(x["a"][1] - 3.0))
    torch.testing.assert_close(x["b"][2], -x["b"][3])
    assert not torch.allclose(x["a"][0] - 3.0, (x["a"][2] - 3.0) / 4)  # pairs draw independent noise
    torch.testing.assert_close(x["a"].std(1), torch.tensor([0.5, 0.5, 2.0, 2.0]), atol=0.03, rtol=0)
    with pytest.raises(AssertionError, match="even batch"):
        sample({"a": torch.zeros(3, 2)}, {"a": torch.ones(3)}, antithetic=True)
