"""The HTTP layer: create_app, error mapping and body limits, dependencies, schemas, one routes module per
resource, and the HTML pages. The only package that knows FastAPI, Starlette, Jinja2 and status codes."""

from app.api.app import create_app, worker_app

__all__ = ["create_app", "worker_app"]
