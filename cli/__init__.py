"""The `rankshard` command line and the local cluster launcher. Nothing imports this package."""

from ._main import main

__all__ = ["main"]
