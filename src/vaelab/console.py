"""What a run prints: the composed config as a tree, user errors as one line, and no
third-party noise."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import UserError


class OneLineError(CompactHydraException):
    """A UserError as Hydra's entry points print it: the message alone, without a traceback
    (and a sweep still sees the job fail)."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside an entry point, turn a UserError into Hydra's one-line error."""
    try:
        yield
    except UserError as err:
        raise OneLineError(str(err)) from None


class _DropTips(logging.Filter):
    """Lightning's adverts for its cloud products ("💡 Tip: ..."), logged at every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet() -> None:
    """Silence, by message and origin, what a run would otherwise print that tells a user
    nothing they can act on. Every other warning and message stays."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    # Lightning's own use of a torch class that torch deprecated; nothing for us to change.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def print_config(cfg: DictConfig) -> None:
    """The composed config as a tree, a branch per top-level key, with values resolved."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, node in cfg.items():
        branch = tree.add(str(key))
        if isinstance(node, DictConfig):
            branch.add(Syntax(OmegaConf.to_yaml(node, resolve=True).rstrip(), "yaml"))
        else:
            branch.add(repr(node))
    Console().print(tree)
