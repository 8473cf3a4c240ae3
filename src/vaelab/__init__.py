"""vaelab: variational autoencoders with PyTorch Lightning and Hydra."""

from vaelab.errors import UserError, require

__all__ = ["UserError", "require"]
