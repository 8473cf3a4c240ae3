"""Building a VAE's parts (encoder, decoder, prior, likelihood) from plain config dicts.

A part is given as `{"_target_": "package.module.Class", key: value, ...}`: the class is
imported by its path and called with the config's keys, plus those of the VAE's own values
that its constructor names (`image_shape`, `latent_size`, `condition_size`, and for priors
`encoder`). Adding a part is therefore one class and one YAML file.
"""

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from vaelab import UserError


def build_part(name: str, spec: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
    """The part `name` from its spec; a UserError names a bad `_target_`, key or value."""
    if "_target_" not in spec:
        raise UserError(f"{name}={dict(spec)!r} has no _target_: give the class to build")
    target, settings = spec["_target_"], {k: v for k, v in spec.items() if k != "_target_"}
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"{name}._target_={target!r} cannot be imported ({err})") from None
    accepted = inspect.signature(cls).parameters
    if clash := sorted(set(settings) & set(context)):
        raise UserError(f"{name}.{clash[0]} is set by the VAE itself: set model.{clash[0]}")
    if unknown := sorted(set(settings) - set(accepted)):
        known = ", ".join(k for k in accepted if k not in context) or "none"
        raise UserError(f"{name}.{unknown[0]} is not a setting of {class_name}: use {known}")
    given = {key: value for key, value in context.items() if key in accepted}
    try:
        return cls(**given, **settings)
    except UserError as err:
        raise UserError(f"{name}.{err}") from None
    except ValueError as err:  # a value the class itself rejects, e.g. torch's optimizers
        raise UserError(f"{name}: {err}") from None
