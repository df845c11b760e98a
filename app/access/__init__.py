"""Who may do what: API keys and their scopes (no HTTP here; app.api.auth maps routes and requests onto them)."""

from app.access.keys import KEY_PREFIX, KEYS_FILE, KeyInfo, KeyStore, Scope, parse_scopes

__all__ = ["KEYS_FILE", "KEY_PREFIX", "KeyInfo", "KeyStore", "Scope", "parse_scopes"]
