"""Commands that attach heads to a backbone and generate with them."""

COMMANDS: list = []
