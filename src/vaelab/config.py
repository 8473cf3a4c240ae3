"""Checks of a composed config: values left to give (???), and types against the constructors."""

import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from vaelab import UserError


def check_types(cfg: DictConfig) -> None:
    """Raise a UserError naming a value left to give, or one of a type its constructor rejects.

    YAML carries no types, so Hydra would pass `model.latent_size=abc` on as a string.
    A hand-written check of the few kinds of hint used here spares a dependency such as
    typeguard, and is run on the resolved config before anything is built.
    """
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise UserError(
            f"{', '.join(missing)} must be given on the command line, e.g. {missing[0]}=..."
        )
    for path, node in _target_nodes(cfg, ""):
        try:
            hints = typing.get_type_hints(get_object(node["_target_"]).__init__)
        except NameError:  # a hint names a type imported only for type checkers, as
            hints = {}  # WandbLogger's `Run`: that class's values go unchecked
        for name, value in node.items():
            if name in hints and not _matches(value, hints[name]):
                raise UserError(
                    f"{path}{name}={value!r} has the wrong type: {_describe(hints[name])} expected"
                )


def _target_nodes(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    """Each dict with a `_target_` in the resolved config, with its dotted path."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}{key}.")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, Sequence):
        return isinstance(value, list | tuple) and all(_matches(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None) or isinstance(hint, type):
        return isinstance(value, hint) or _builds(value, hint)
    return True  # hints of other kinds are not checked


def _builds(value: Any, cls: type) -> bool:
    """Whether value is a node that Hydra builds into a `cls`, e.g. trainer.profiler's."""
    if not isinstance(value, dict) or "_target_" not in value or value.get("_partial_"):
        return False
    target = get_object(value["_target_"])
    return isinstance(target, type) and issubclass(target, cls)


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")
