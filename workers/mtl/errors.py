"""The one exception type users of the MTL core catch for bad names, hyper-parameters and inputs."""


class MethodError(ValueError):
    """A method name, hyper-parameter or input tensor the core cannot accept; the message says why."""
