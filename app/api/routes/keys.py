"""API keys over HTTP (admin scope): list, create (the key is in the answer once), revoke. The same store as
`python -m app.keys`; a change made either way is in force at once here, and within seconds for the other."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.access import KeyInfo, Scope
from app.access.keys import NAME_PATTERN
from app.api.contract import errors
from app.api.deps import KeysDep

router = APIRouter(tags=["keys"])

KeyName = Annotated[str, Path(pattern=f"^{NAME_PATTERN.pattern}$", description="the key's name")]


class KeyIn(BaseModel):
    name: str = Field(pattern=f"^{NAME_PATTERN.pattern}$", description="a name for logs and revocation")
    scopes: list[Scope] = Field(min_length=1, description="search, write and/or admin (admin covers all)")


class KeyOut(BaseModel):
    name: str
    scopes: list[Scope]
    created: float = Field(description="Unix time")
    last_used: float | None = Field(description="Unix time, written back every few seconds")

    @classmethod
    def of(cls, info: KeyInfo) -> KeyOut:
        return cls(name=info.name, scopes=info.scope_list, created=info.created, last_used=info.last_used)


class NewKeyOut(KeyOut):
    key: str = Field(description="the key itself: shown this once (only its hash is stored)")


class KeyListOut(BaseModel):
    keys: list[KeyOut]


@router.get("/api/keys", response_model=KeyListOut, responses=errors(503))
async def list_keys(keys: KeysDep) -> KeyListOut:
    """Every key's name, scopes, creation and last use; never the keys themselves."""
    return KeyListOut(keys=[KeyOut.of(i) for i in await run_in_threadpool(keys.list)])


@router.post("/api/keys", response_model=NewKeyOut, status_code=201, responses=errors(409, 422, 503))
async def create_key(body: KeyIn, keys: KeysDep) -> NewKeyOut:
    """A new key; the answer is the only time it is shown. 409 when the name is taken."""
    info, key = await run_in_threadpool(lambda: keys.create(body.name, body.scopes))
    return NewKeyOut(**KeyOut.of(info).model_dump(), key=key)


@router.delete("/api/keys/{name}", response_model=KeyOut, responses=errors(404, 422, 503))
async def revoke_key(name: KeyName, keys: KeysDep) -> KeyOut:
    """Revoke a key: refused from the next request on."""
    return KeyOut.of(await run_in_threadpool(lambda: keys.revoke(name)))
