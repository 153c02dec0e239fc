"""``python -m flowcond`` (and ``torchrun ... -m flowcond``): the ``flowcond`` command."""

from flowcond.cli import cli

if __name__ == "__main__":
    cli(prog_name="flowcond")
