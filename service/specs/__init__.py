"""Job specs, the one contract between the API, the CLI and the workers: :mod:`.train` (one training run),
:mod:`.sweep` (a search over a training spec), :mod:`.submission` (either, as a client submits it), :mod:`.base`
(the strictness and error shape they share)."""
