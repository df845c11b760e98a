"""Bulk ingest: the model and wire schema (model), resumable state in SQLite (state), the folder walk (walk),
one run over a folder (pipeline, with its commit buffer in commit), background jobs inside the service (manager),
progress text (report), and the `python -m app.ingest` command (cli, with client for a running service)."""
