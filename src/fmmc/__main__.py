"""``python -m fmmc ...``: the same as the ``fmmc`` command."""

from fmmc.cli.main import entry

entry()
