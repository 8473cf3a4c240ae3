"""vaelab: variational autoencoders on MNIST with PyTorch Lightning and Hydra."""


class UserError(Exception):
    """A mistake in the user's setup or config; entry points print it without a traceback."""
