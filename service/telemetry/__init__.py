"""FlatMTL's Prometheus metrics: one scrape target, the API, for the control plane and for training.

Why the API exports training metrics: Ray runs training in processes that come and go (trials,
Train workers, restarts after a lost lease), on ports and hosts Prometheus cannot know in advance.
Workers store their step metrics as points in the database through the lease-fenced queue, and the API
exports the latest points of running jobs at scrape time. A sweep's running trials are exported the
same way with a ``trial`` label (its index; empty, that is absent in Prometheus, for a training job): the
label is bounded by how many trials Ray Tune runs at once, and a trial's series end with the trial.
Request latency is the one thing measured in the API process itself.

- :mod:`.names`: every metric and point name (pure Python; all the worker needs besides :mod:`.points`).
- :mod:`.points`: what a worker writes for one step.
- :mod:`.snapshot`: what a scrape reads, and the database as its source.
- :mod:`.collector`: the API's registry and the collector that exports a snapshot at every scrape.
"""
