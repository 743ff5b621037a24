"""The one exception type users of the MTL core catch for bad names, hyper-parameters and inputs."""


class MethodError(ValueError):
    """A method name, hyper-parameter or input tensor the core cannot accept; the message says why."""


class NonFiniteLossesError(MethodError):
    """The loss closure returned NaN or inf for the tasks at ``indices`` (rank means, so every rank raises)."""

    def __init__(self, indices: list[int], values: list[float]) -> None:
        super().__init__(f"loss closure: losses contain NaN or inf (tasks {indices}: {values}); allowed: finite values")
        self.indices = indices
        self.values = values
