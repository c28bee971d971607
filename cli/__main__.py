"""``python -m cli`` is ``rankshard``."""

from . import main

main(prog_name="rankshard")
