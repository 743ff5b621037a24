"""The worker side of the control plane: ``flatmtl worker`` claims jobs from the queue and runs them on Ray.

- ``contracts``: what the modules below hand each other (a planned trial, the payload a trial gets across Ray,
  a rank's configuration, the sink, shared names); it imports none of them.
- ``plan``: a job's trials (a training job is one), with stable indices, configs and run directories.
- ``ranks``: one Ray Train worker's training (the training package's Trainer in Ray's process group).
- ``trials``: Ray Tune over function trials that each run a TorchTrainer; timeouts; cluster-size checks.
- ``search``: a sweep spec as Tune objects (FIFO, ASHA or PBT scheduler; Optuna search; param space, trial names).
- ``lineage``: PBT's epoch checkpoints handed to Tune, and a cloned one adopted by another trial.
- ``callbacks``: the Tune callback and stopper between a running sweep and the worker; Train reports to the trial.
- ``points``: epoch reports as stored metric and telemetry points.
- ``job``: one claimed job's sink (metrics, trials, outcome), fenced by its lease.
- ``loop``: the claim / heartbeat / reap loop.
- ``service_demo``, ``cli``: ``flatmtl demo service`` and ``flatmtl worker``.
"""
