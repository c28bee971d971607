"""``python -m rankshard.cli`` is ``rankshard``."""

from . import main

main(prog_name="rankshard")
