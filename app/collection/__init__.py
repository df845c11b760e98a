"""`python -m app.collection`: the command lives with the other entry points (app.cli.collection)."""
