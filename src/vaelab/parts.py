"""Building a VAE's parts (encoder, decoder, prior, likelihood) from plain config dicts.

A part is given as `{"_target_": "package.module.Class", key: value, ...}`: the class is
imported by its path and called with the config's keys, plus those of the VAE's own values
that its constructor names (`image_shape`, `latent_size`, `condition_size`, and for priors
`encoder`). Adding a part is therefore one class and one YAML file.

Training builds whatever its config names. Loading a checkpoint first checks every `_target_`
the file names (`check_targets`), since a file can name any callable: only vaelab's own parts,
torch's optimizers and schedulers, and classes of modules the user trusts are built.
"""

import importlib
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from vaelab.errors import UserError

MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class Role(NamedTuple):
    """What a `_target_` in a checkpoint may name: a class of one of `modules` (or of their
    submodules) that derives from `base`, which `kind` names in messages."""

    modules: tuple[str, ...]
    base: type | tuple[type, ...]
    kind: str


PART = Role(
    ("vaelab.networks", "vaelab.priors", "vaelab.likelihoods"), nn.Module, "torch.nn.Module"
)
SCHEDULERS = (LRScheduler, ReduceLROnPlateau)
ROLES = {  # by the VAEModule hyperparameter that holds the `_target_`
    "encoder": PART,
    "decoder": PART,
    "prior": PART,
    "likelihood": PART,
    "optimizer": Role(("torch.optim",), Optimizer, "torch.optim.Optimizer"),
    "scheduler": Role(("torch.optim.lr_scheduler", "vaelab.schedules"), SCHEDULERS, "LRScheduler"),
}
# The modules whose classes loading builds by default, in one role or another (vaelab.data
# for the DataModule, see vaelab.checkpoints).
KNOWN = tuple(sorted({m for role in ROLES.values() for m in role.modules} | {"vaelab.data"}))
# A `_target_` nested deeper, which nothing of vaelab builds: any class of those modules.
NESTED = Role(KNOWN, object, "class")


def build_part(
    name: str,
    spec: Mapping[str, Any],
    context: Mapping[str, Any],
    set_by: Mapping[str, str] | None = None,
) -> Any:
    """The part `name` from its spec; a UserError names a bad `_target_`, key or value.
    set_by: where a user sets each of the context's values, if not at model.KEY."""
    cls = part_class(name, spec)
    settings = {k: v for k, v in spec.items() if k != "_target_"}
    class_name = spec["_target_"].rpartition(".")[2]
    accepted = inspect.signature(cls).parameters
    if clash := sorted(set(settings) & set(context) & set(accepted)):
        where = (set_by or {}).get(clash[0], f"model.{clash[0]}")
        raise UserError(f"{name}.{clash[0]} is set by the VAE itself: set {where}")
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


def part_class(name: str, spec: Mapping[str, Any]) -> Any:
    """The class (or callable) that the spec's `_target_` names, imported."""
    if "_target_" not in spec:
        raise UserError(f"{name}={dict(spec)!r} has no _target_: give the class to build")
    target = spec["_target_"]
    module_name, _, class_name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"{name}._target_={target!r} cannot be imported ({err})") from None


def check_optimizer(optimizer: Optimizer, name: str = "optimizer") -> None:
    """Raise a UserError for a momentum of 1 or more, which torch's SGD and RMSprop take and
    then diverge with (each step adds the whole past update again); `name` prefixes the key.
    torch itself refuses a negative momentum, and Adam's betas outside [0, 1)."""
    momentum = optimizer.defaults.get("momentum")
    if isinstance(momentum, int | float) and not 0 <= momentum < 1:
        raise UserError(f"{name}.momentum={momentum!r} is invalid: use 0 <= momentum < 1, e.g. 0.9")


def check_targets(source: str, hparams: Mapping[str, Any], trust: Sequence[str] = ()) -> None:
    """Raise a UserError, before anything is imported, unless each `_target_` in a VAEModule's
    hyperparameters from `source` (a checkpoint) names a class that loading may build."""
    for name, target in targets(hparams, "model."):
        resolve(source, name, target, ROLES.get(name.removeprefix("model."), NESTED), trust)


def targets(values: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The dotted name and the `_target_` of each dict in nested dicts and lists."""
    if isinstance(values, Mapping):
        if "_target_" in values:
            yield prefix.rstrip("."), values["_target_"]
        items = values.items()
    elif isinstance(values, list | tuple):
        items = enumerate(values)
    else:
        return
    for key, value in items:
        yield from targets(value, f"{prefix}{key}.")


def resolve(source: str, name: str, target: Any, role: Role, trust: Sequence[str] = ()) -> type:
    """The class that `name._target_` in `source` names, if loading may build it: one of the
    role's modules or of a trusted one, derived from the role's base. The module's name is
    checked before it is imported, since importing a module runs its code."""
    check_trust(trust)
    allowed = (*role.modules, *trust)
    module_name, _, class_name = target.rpartition(".") if isinstance(target, str) else ("", "", "")
    said = f"{source} names {name}._target_={target!r}"
    if not (MODULE_NAME.fullmatch(module_name) and class_name.isidentifier()):
        raise UserError(f"{said}, which is not a class's path: train it again")
    if within(module_name, KNOWN) and not within(module_name, allowed):  # in another role
        modules = " or ".join(role.modules)
        raise UserError(f"{said}, which is not a {role.kind} of {modules}: loading refuses it")
    if not within(module_name, allowed):
        raise UserError(
            f"{said}, which loading does not import: only vaelab's own parts and DataModules "
            f"and torch's optimizers and schedulers load unless trusted. If you trust this file "
            f"and the module {module_name}, pass trust=['{module_name}']"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{said}, which cannot be imported ({err})") from None
    if not isinstance(cls, type):
        raise UserError(f"{said}, which is a {type(cls).__name__}, not a class: loading refuses it")
    if not within(cls.__module__, allowed):  # e.g. vaelab.priors.Tensor, which is torch's
        raise UserError(
            f"{said}, a class defined in {cls.__module__}, not in {module_name}: loading builds "
            "only classes defined in the modules it trusts"
        )
    if not issubclass(cls, role.base):
        raise UserError(f"{said}, which is not a {role.kind}: loading refuses it")
    return cls


def within(module_name: str, modules: Sequence[str]) -> bool:
    """Whether `module_name` is one of `modules` or a submodule of one."""
    return any(module_name == m or module_name.startswith(f"{m}.") for m in modules)


def check_trust(trust: Sequence[str]) -> None:
    """Raise a UserError unless `trust` is a list of module names."""
    names = not isinstance(trust, str | bytes) and isinstance(trust, Sequence)
    if not (names and all(isinstance(m, str) and MODULE_NAME.fullmatch(m) for m in trust)):
        raise UserError(
            f"trust={trust!r} is invalid: give a list of module names, e.g. [my_priors]"
        )
