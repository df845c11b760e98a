"""Who may do what, how often: API keys and their scopes, rate limits (no HTTP here; app.api.auth maps routes
and requests onto them)."""

from app.access.keys import KEY_PREFIX, KEYS_FILE, KeyInfo, KeyStore, Scope, parse_scopes
from app.access.rates import RateLimiter

__all__ = ["KEYS_FILE", "KEY_PREFIX", "KeyInfo", "KeyStore", "RateLimiter", "Scope", "parse_scopes"]
