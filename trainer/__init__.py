"""Entry points, configs, checkpoint I/O and logging: the only package that imports policy, envs and rollout."""

import os

# torch's OpenMP threads spin while they wait for work. Where jobs share cores, the spinning crowds out the thread
# being waited on: beside other jobs on 2 cores, a digits imitation step took 3.3 s with 2 spinning threads, 0.05 s
# with passive ones. OpenMP reads this once, when torch loads; `python -m trainer.X` imports this package first. An
# explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
