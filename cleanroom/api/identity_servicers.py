"""Thin servicers for principals (the admin service) and the caller's own identity."""

from __future__ import annotations

import grpc

from cleanroom.api.guard import caller, request_key
from cleanroom.domain.console_logins import check_username
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.pagination import next_page_token, parse_page
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.principals import PrincipalService
from cleanroom.server.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.v1 import identity_pb2, identity_pb2_grpc
from cleanroom.wire.common import role_from_proto, timestamp
from cleanroom.wire.identity import (
    console_login_to_proto,
    lifetime_from_proto,
    organisation_id_from_name,
    organisation_kind_from_proto,
    organisation_to_proto,
    principal_id_from_name,
    principal_to_proto,
    token_id_from_name,
    token_to_proto,
)


class AdminServicer(identity_pb2_grpc.AdminServiceServicer):
    def __init__(self, principals: PrincipalService, keys: KeyService, idempotency: Idempotency) -> None:
        self._principals = principals
        self._keys = keys
        self._idempotency = idempotency

    def CreatePrincipal(self, request: identity_pb2.CreatePrincipalRequest, context: grpc.ServicerContext) -> identity_pb2.CreatePrincipalResponse:
        check_request_id(request.request_id)
        role = role_from_proto(request.role)
        organisation_id = organisation_id_from_name(request.organisation) if request.organisation else None
        lifetime = lifetime_from_proto(request.token_lifetime if request.HasField("token_lifetime") else None, "token_lifetime")

        def create() -> identity_pb2.CreatePrincipalResponse:
            principal, _token = self._principals.create(request.display_name, role, actor=caller(context).resource_name,
                                                        organisation_id=organisation_id, token_lifetime=lifetime)
            # The token is never stored: a retry re-derives it from the principal id.
            return identity_pb2.CreatePrincipalResponse(principal=principal_to_proto(principal))

        response = self._idempotency.run(
            request_key(context, "CreatePrincipal", request.request_id), fingerprint(request), identity_pb2.CreatePrincipalResponse, create
        )
        response.token = self._principals.token_for(response.principal.name.removeprefix("principals/"))
        return response

    def ListPrincipals(self, request: identity_pb2.ListPrincipalsRequest, context: grpc.ServicerContext) -> identity_pb2.ListPrincipalsResponse:
        page = parse_page(request.page_size, request.page_token)
        principals = self._principals.list(page)
        return identity_pb2.ListPrincipalsResponse(
            principals=[principal_to_proto(p) for p in principals],
            next_page_token=next_page_token([p.id for p in principals], page.size),
        )

    def CreateOrganisation(self, request: identity_pb2.CreateOrganisationRequest, context: grpc.ServicerContext) -> identity_pb2.Organisation:
        check_request_id(request.request_id)
        kind = organisation_kind_from_proto(request.kind)

        def create() -> identity_pb2.Organisation:
            return organisation_to_proto(self._principals.create_organisation(request.display_name, kind, actor=caller(context).resource_name))

        return self._idempotency.run(
            request_key(context, "CreateOrganisation", request.request_id), fingerprint(request), identity_pb2.Organisation, create
        )

    def ListOrganisations(self, request: identity_pb2.ListOrganisationsRequest,
                          context: grpc.ServicerContext) -> identity_pb2.ListOrganisationsResponse:
        page = parse_page(request.page_size, request.page_token)
        organisations = self._principals.list_organisations(page)
        return identity_pb2.ListOrganisationsResponse(
            organisations=[organisation_to_proto(o) for o in organisations],
            next_page_token=next_page_token([o.id for o in organisations], page.size),
        )

    def RotateKeys(self, request: identity_pb2.RotateKeysRequest, context: grpc.ServicerContext) -> identity_pb2.RotateKeysResponse:
        check_request_id(request.request_id)

        def rotate() -> identity_pb2.RotateKeysResponse:
            key_id, count = self._keys.rotate(actor=caller(context).resource_name)
            return identity_pb2.RotateKeysResponse(key_id=key_id, rewrapped_data_keys=count)

        return self._idempotency.run(
            request_key(context, "RotateKeys", request.request_id), fingerprint(request), identity_pb2.RotateKeysResponse, rotate
        )


    def IssueToken(self, request: identity_pb2.IssueTokenRequest, context: grpc.ServicerContext) -> identity_pb2.IssueTokenResponse:
        check_request_id(request.request_id)
        principal_id = principal_id_from_name(request.principal, "principal")
        lifetime = lifetime_from_proto(request.lifetime if request.HasField("lifetime") else None, "lifetime")
        tokens = self._principals.tokens

        def issue() -> identity_pb2.IssueTokenResponse:
            # The bearer token is never stored, not even in the idempotency record: it is derived below.
            return identity_pb2.IssueTokenResponse(token=token_to_proto(tokens.issue(principal_id, lifetime, actor=caller(context).resource_name)))

        response = self._idempotency.run(
            request_key(context, "IssueToken", request.request_id), fingerprint(request), identity_pb2.IssueTokenResponse, issue
        )
        response.bearer_token = tokens.secret_of(token_id_from_name(response.token.name))
        return response

    def RevokeToken(self, request: identity_pb2.RevokeTokenRequest, context: grpc.ServicerContext) -> identity_pb2.RevokeTokenResponse:
        check_request_id(request.request_id)
        target = request.WhichOneof("target")
        if target is None:
            raise bad_request("name the token to revoke, or the principal whose tokens to revoke",
                              FieldViolation("token", "a token name like tokens/{id}, or set principal"))
        token_id = token_id_from_name(request.token) if target == "token" else None
        principal_id = principal_id_from_name(request.principal, "principal") if target == "principal" else None
        tokens, actor = self._principals.tokens, caller(context).resource_name

        def revoke() -> identity_pb2.RevokeTokenResponse:
            revoked = [tokens.revoke(token_id, actor=actor)] if token_id else tokens.revoke_principal(principal_id or "", actor=actor)
            return identity_pb2.RevokeTokenResponse(tokens=[token_to_proto(t) for t in revoked])

        return self._idempotency.run(
            request_key(context, "RevokeToken", request.request_id), fingerprint(request), identity_pb2.RevokeTokenResponse, revoke
        )

    def ListTokens(self, request: identity_pb2.ListTokensRequest, context: grpc.ServicerContext) -> identity_pb2.ListTokensResponse:
        principal_id = principal_id_from_name(request.principal, "principal") if request.principal else None
        page = parse_page(request.page_size, request.page_token)
        tokens = self._principals.tokens.list(principal_id, page)
        return identity_pb2.ListTokensResponse(tokens=[token_to_proto(t) for t in tokens],
                                               next_page_token=next_page_token([t.id for t in tokens], page.size))


    def CreateConsoleLogin(self, request: identity_pb2.CreateConsoleLoginRequest,
                           context: grpc.ServicerContext) -> identity_pb2.CreateConsoleLoginResponse:
        check_request_id(request.request_id)
        principal_id = principal_id_from_name(request.principal, "principal")
        check_username(request.username)
        logins = self._principals.console_logins

        def create() -> identity_pb2.CreateConsoleLoginResponse:
            # The code is never stored, not even in the idempotency record: it is derived below.
            login, _code, _expires = logins.create(principal_id, request.username, actor=caller(context).resource_name)
            return identity_pb2.CreateConsoleLoginResponse(login=console_login_to_proto(login))

        response = self._idempotency.run(
            request_key(context, "CreateConsoleLogin", request.request_id), fingerprint(request),
            identity_pb2.CreateConsoleLoginResponse, create
        )
        _login, code, expires = logins.current_code(principal_id)
        response.one_time_code = code
        if expires is not None:
            response.code_expire_time.CopyFrom(timestamp(expires))
        return response


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, principals: PrincipalService) -> None:
        self._logins = principals.console_logins

    def WhoAmI(self, request: identity_pb2.WhoAmIRequest, context: grpc.ServicerContext) -> identity_pb2.Principal:
        return principal_to_proto(caller(context))

    def SignIn(self, request: identity_pb2.SignInRequest, context: grpc.ServicerContext) -> identity_pb2.SignInResponse:
        secret = request.WhichOneof("secret")
        if not request.username or secret is None:
            raise bad_request("give a username and its password or one-time code",
                              FieldViolation("username" if not request.username else "password", "required"))
        token, bearer, principal, must_set = self._logins.sign_in(
            request.username, password=request.password if secret == "password" else None,
            code=request.one_time_code if secret == "one_time_code" else None)
        return identity_pb2.SignInResponse(bearer_token=bearer, token=token_to_proto(token),
                                           principal=principal_to_proto(principal), must_set_password=must_set)

    def SetConsolePassword(self, request: identity_pb2.SetConsolePasswordRequest,
                           context: grpc.ServicerContext) -> identity_pb2.SetConsolePasswordResponse:
        login = self._logins.set_password(caller(context), request.new_password)
        return identity_pb2.SetConsolePasswordResponse(login=console_login_to_proto(login))

    def SignOut(self, request: identity_pb2.SignOutRequest, context: grpc.ServicerContext) -> identity_pb2.SignOutResponse:
        self._logins.sign_out(caller(context), token_id_from_name(request.token))
        return identity_pb2.SignOutResponse()
