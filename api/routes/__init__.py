"""API routers: jobs (and their metrics, trials, logs, artifacts), methods, health."""
