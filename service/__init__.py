"""FlatMTL's control plane core: settings, job specs, database, migrations and the job queue.

Shared by the API, the CLI and the workers; it never imports torch or ray.
"""
