"""API keys: create (the key is in this one response), list, revoke. Admin scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status

from app.db import after_commit
from app.deps import SessionDep
from app.errors import error_responses
from app.limits import MAX_INT64
from app.schemas import KeyCreate, KeyCreated, KeyRead
from app.services import keys as service
from app.services.keys import KeyRing

router = APIRouter(prefix="/keys", tags=["keys"])


def get_keyring(request: Request) -> KeyRing:
    return request.app.state.keyring


KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
KeyId = Annotated[int, Path(ge=1, le=MAX_INT64, description="The key's id.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Create an API key",
    operation_id="createKey",
    responses=error_responses(
        409,
        422,
        e409="A key has that name (`conflict`).",
        e422="Invalid name, scopes, twins or rate (`invalid`).",
    ),
)
def create_key(body: KeyCreate, session: SessionDep, keyring: KeyRingDep) -> KeyCreated:
    """Create a key. The response holds the key itself, once: only its hash is stored."""
    key, secret = service.create_key(session, body.name, body.scopes, body.twins, body.rate)
    after_commit(session, keyring.invalidate)
    return KeyCreated(**KeyRead.model_validate(key).model_dump(), key=secret)


@router.get("", response_model=list[KeyRead], summary="List the API keys", operation_id="listKeys")
def list_keys(session: SessionDep) -> list[KeyRead]:
    """Every key: name, first characters, scopes, twins, rate; never the key."""
    return [KeyRead.model_validate(k) for k in service.list_keys(session)]


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    operation_id="revokeKey",
    responses={
        204: {"description": "Revoked."},
        **error_responses(
            404, 422, e404="No such key (`not_found`).", e422="Invalid key id (`invalid`)."
        ),
    },
)
def revoke_key(key_id: KeyId, session: SessionDep, keyring: KeyRingDep) -> Response:
    """Revoke a key: this process refuses it from the next request on, other API processes
    once their snapshot of the keys is renewed (`TANDEM_KEY_REFRESH_SECONDS`)."""
    service.revoke_key(session, key_id)
    after_commit(session, keyring.invalidate)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
