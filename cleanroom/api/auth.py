"""Who may call what. Every RPC has an explicit rule; a method without one is refused (fail closed)."""

from __future__ import annotations

from collections.abc import Sequence

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import ALL_ROLES, Principal, Role

# Health checks and reflection carry no data and are open, as load balancers and grpcurl expect.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

UNAUTHENTICATED = "a valid bearer token is required"

_ADMIN = frozenset({Role.ADMIN})
_OWNER = frozenset({Role.DATA_OWNER})
_OFFICER = frozenset({Role.PRIVACY_OFFICER})
_MAKER = frozenset({Role.MANUFACTURER})
_OVERSIGHT = frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR})

RULES: dict[str, frozenset[Role]] = {
    "/cleanroom.v1.AdminService/CreatePrincipal": _ADMIN,
    "/cleanroom.v1.AdminService/ListPrincipals": _ADMIN,
    "/cleanroom.v1.AdminService/CreateOrganisation": _ADMIN,
    "/cleanroom.v1.AdminService/ListOrganisations": _ADMIN,
    "/cleanroom.v1.AdminService/RotateKeys": _ADMIN,
    "/cleanroom.v1.AdminService/IssueToken": _ADMIN,
    "/cleanroom.v1.AdminService/RevokeToken": _ADMIN,
    "/cleanroom.v1.AdminService/ListTokens": _ADMIN,
    "/cleanroom.v1.AdminService/CreateConsoleLogin": _ADMIN,
    "/cleanroom.v1.IdentityService/WhoAmI": ALL_ROLES,
    # The console's sign-in exchanges a username and password for a token, so it needs none (ANONYMOUS).
    "/cleanroom.v1.IdentityService/SignIn": ALL_ROLES,
    "/cleanroom.v1.IdentityService/SetConsolePassword": ALL_ROLES,
    "/cleanroom.v1.IdentityService/SignOut": ALL_ROLES,
    "/cleanroom.v1.DatasetService/UploadDataset": _OWNER,
    # Manufacturers see the schema of datasets shared with them; the service filters what exists.
    "/cleanroom.v1.DatasetService/GetDataset": frozenset({Role.DATA_OWNER, Role.MANUFACTURER}),
    # Officers and auditors list the schemas of the datasets they govern (the budgets they oversee).
    "/cleanroom.v1.DatasetService/ListDatasets": frozenset({Role.DATA_OWNER, Role.MANUFACTURER, Role.PRIVACY_OFFICER, Role.AUDITOR}),
    "/cleanroom.v1.DatasetService/DeleteDataset": _OWNER,
    "/cleanroom.v1.PrivacyService/ShareDataset": _OFFICER,
    "/cleanroom.v1.PrivacyService/SetBudget": _OFFICER,
    # Manufacturers see their own share's budget; the service filters the rest out.
    "/cleanroom.v1.PrivacyService/GetBudgets": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.MANUFACTURER, Role.DATA_OWNER}),
    "/cleanroom.v1.PrivacyService/SetApprovalPolicy": _OFFICER,
    "/cleanroom.v1.PrivacyService/EstimateCost": frozenset({Role.PRIVACY_OFFICER, Role.MANUFACTURER}),
    "/cleanroom.v1.PrivacyService/ListLedger": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.DATA_OWNER}),
    "/cleanroom.v1.PrivacyService/ListPendingRequests": _OFFICER,
    "/cleanroom.v1.PrivacyService/ApproveRequest": _OFFICER,
    "/cleanroom.v1.PrivacyService/RejectRequest": _OFFICER,
    "/cleanroom.v1.PrivacyService/SetShareState": frozenset({Role.PRIVACY_OFFICER, Role.DATA_OWNER}),
    "/cleanroom.v1.AuditService/VerifyAuditLog": _OVERSIGHT,
    "/cleanroom.v1.AttestationService/GetTrustBundle": ALL_ROLES,
    # Statistics over datasets shared with the caller, charged to the caller's share.
    "/cleanroom.v1.StatsService/RunQuery": _MAKER,
    "/cleanroom.v1.StatsService/EstimateQuery": _MAKER,
    "/cleanroom.v1.ModelService/SubmitModel": _MAKER,
    # A manufacturer sees its own models only; the service filters.
    "/cleanroom.v1.ModelService/GetModel": _MAKER,
    "/cleanroom.v1.ModelService/ListModels": _MAKER,
    # Jobs: a manufacturer's own only (the service reports another's exactly like a missing one).
    "/cleanroom.v1.JobService/SubmitTraining": _MAKER,
    "/cleanroom.v1.JobService/SubmitEvaluation": _MAKER,
    "/cleanroom.v1.JobService/GetJob": _MAKER,
    "/cleanroom.v1.JobService/ListJobs": _MAKER,
    "/cleanroom.v1.JobService/WatchJob": _MAKER,
    "/cleanroom.v1.JobService/CancelJob": _MAKER,
    "/cleanroom.v1.JobService/DownloadArtifact": _MAKER,
    # Releases: officers and auditors governing a release's dataset, and its manufacturer (the service
    # reports any other exactly like a missing one).
    "/cleanroom.v1.ReleaseService/ListReleases": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.MANUFACTURER}),
    "/cleanroom.v1.ReleaseService/GetRelease": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.MANUFACTURER}),
    "/cleanroom.v1.ReleaseService/DownloadReleaseArtifact": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.MANUFACTURER}),

    # Hospitals read the entries about their own datasets; the service filters the rest out.
    "/cleanroom.v1.AuditService/ExportAuditLog": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.DATA_OWNER}),
    # A signed export for a regulator, over the same entries the caller may export.
    "/cleanroom.v1.AuditService/SignAuditExport": frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.DATA_OWNER}),
}


# Methods that also serve a caller without a token. They still pass the guard (errors, metrics);
# the servicer reads no principal (`caller()` refuses one that has none).
ANONYMOUS = frozenset({"/cleanroom.v1.IdentityService/SignIn"})


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The token of `authorization: Bearer <token>`; the scheme is case-insensitive, as in HTTP."""
    for key, value in metadata:
        if key != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def authorize(method: str, principal: Principal | None) -> Principal:
    if principal is None:
        raise CleanroomError(ErrorCode.UNAUTHENTICATED, UNAUTHENTICATED)
    allowed = RULES.get(method)
    if allowed is None or principal.role not in allowed:
        raise CleanroomError(ErrorCode.PERMISSION_DENIED, "your role may not call this method")
    return principal
