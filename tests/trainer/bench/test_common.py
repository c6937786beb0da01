"""What the bench subcommands share (trainer/bench/common.py), and the subcommand registry of __main__.py."""

from trainer.bench.common import paired_difference


def test_paired_difference_is_mean_se_and_share_better():
    # differences 0.02, 0.00, 0.04 -> mean 2 pts, sd 2 pts, se 2 / sqrt(3) = 1.15; better on 2 of 3 seeds
    assert paired_difference([0.5, 0.6, 0.7], [0.52, 0.6, 0.74]) == "+2.00 +- 1.15 pts, better on 67%"
