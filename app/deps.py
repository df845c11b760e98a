"""Dependency aliases: services live on app.state, built in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.service import FaceService


def get_service(request: Request) -> FaceService:
    service: FaceService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[FaceService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
