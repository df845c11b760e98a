"""Command-line entry points. Like app.api, they sit on top and wire the services through app.bootstrap; the
`python -m app.<name>` modules are shims that call them."""
