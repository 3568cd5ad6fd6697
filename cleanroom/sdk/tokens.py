"""The SDK's token calls (admin role), mixed into Client: issue, revoke and list bearer tokens."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from cleanroom.v1 import identity_pb2, identity_pb2_grpc
from cleanroom.wire.identity import duration_to_proto

T = TypeVar("T")


class TokenCalls:
    """IssueToken, RevokeToken and ListTokens. A revoked token fails on its next call, on every replica."""

    admin: identity_pb2_grpc.AdminServiceStub
    _call: Callable[..., Any]
    _pages: Callable[..., Iterator[Any]]

    def issue_token(self, principal: str, *, lifetime: timedelta | None = None,
                    request_id: str | None = None) -> identity_pb2.IssueTokenResponse:
        """A new token for `principal` ("principals/{id}"); `.bearer_token` is shown this once. Without
        `lifetime` it never expires."""
        request = identity_pb2.IssueTokenRequest(request_id=request_id or uuid.uuid4().hex, principal=principal)
        if lifetime is not None:
            request.lifetime.CopyFrom(duration_to_proto(lifetime))
        response: identity_pb2.IssueTokenResponse = self._call(self.admin.IssueToken, request)
        return response

    def revoke_token(self, token: str, *, request_id: str | None = None) -> identity_pb2.Token:
        """Revokes `token` ("tokens/{id}"); one already revoked is returned as it is."""
        request = identity_pb2.RevokeTokenRequest(request_id=request_id or uuid.uuid4().hex, token=token)
        response: identity_pb2.RevokeTokenResponse = self._call(self.admin.RevokeToken, request)
        return response.tokens[0]

    def revoke_tokens_of(self, principal: str, *, request_id: str | None = None) -> list[identity_pb2.Token]:
        """Revokes every token of `principal`; returns those this call revoked."""
        request = identity_pb2.RevokeTokenRequest(request_id=request_id or uuid.uuid4().hex, principal=principal)
        response: identity_pb2.RevokeTokenResponse = self._call(self.admin.RevokeToken, request)
        return list(response.tokens)

    def list_tokens(self, principal: str = "", page_size: int = 0) -> Iterator[identity_pb2.Token]:
        """Every token (or `principal`'s): never the token itself."""
        return self._pages(self.admin.ListTokens, identity_pb2.ListTokensRequest(principal=principal, page_size=page_size), "tokens")
