"""`flowcond plugins`: list installed plugins and what they register."""

COMMANDS: list = []
