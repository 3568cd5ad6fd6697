"""Organisations over gRPC: CreateOrganisation and ListOrganisations, the default organisation of
each role, the membership rules, and isolation between two hospitals for every dataset-bearing
RPC and every role that may call it (NOT_FOUND across organisations, the same call answered at home)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cleanroom.domain.audit import AuditEntry, entry_hash
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OPERATOR_ID
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.v1 import common_pb2, identity_pb2, identity_pb2_grpc
from tests.api.test_datasets_api import _rows, _schema, _write_csv

OPERATOR = f"organisations/{OPERATOR_ID}"


def _error(call: Callable[[], object]) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as caught:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    assert "Traceback" not in str(caught.value)
    return caught.value


def _violations(running, request: Any, method: str = "CreatePrincipal") -> tuple[grpc.StatusCode, list[str]]:
    """Calls an admin RPC raw, to read the field violations of the status details."""
    with grpc.insecure_channel(running.address) as channel:
        stub = identity_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, metadata=(("authorization", f"Bearer {running.admin_token}"),), timeout=10)
    status = rpc_status.from_call(caught.value)
    fields = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return caught.value.code(), fields


@pytest.fixture
def admin(running) -> Iterator[Client]:
    with running.client(running.admin_token) as client:
        yield client


def test_defaults_give_owners_and_makers_their_own_and_oversight_the_operator(running, admin) -> None:
    assert admin.whoami().organisation == OPERATOR  # the first admin
    owner = admin.create_principal("Seoul General data team", "data_owner").principal
    maker = admin.create_principal("Acme Devices", "manufacturer").principal
    oversight = [admin.create_principal(f"p {role}", role).principal for role in ("privacy_officer", "auditor", "admin")]
    assert {p.organisation for p in oversight} == {OPERATOR}
    organisations = {o.name: o for o in admin.list_organisations()}
    assert organisations[owner.organisation].kind == identity_pb2.ORGANISATION_KIND_HOSPITAL
    assert organisations[owner.organisation].display_name == "Seoul General data team"
    assert organisations[maker.organisation].kind == identity_pb2.ORGANISATION_KIND_MANUFACTURER
    assert organisations[OPERATOR].kind == identity_pb2.ORGANISATION_KIND_OPERATOR
    second = admin.create_principal("Busan data team", "data_owner").principal
    assert second.organisation not in (owner.organisation, OPERATOR)  # one of its own each
    listed = {p.name: p.organisation for p in admin.list_principals()}
    assert listed[owner.name] == owner.organisation


def test_create_organisation_and_put_principals_in_it(running, admin) -> None:
    hospital = admin.create_organisation("Seoul General Hospital", "hospital", request_id="org-1")
    assert hospital.name.startswith("organisations/") and hospital.display_name == "Seoul General Hospital"
    assert admin.create_organisation("Seoul General Hospital", "hospital", request_id="org-1").name == hospital.name  # a retry
    assert sum(o.display_name == "Seoul General Hospital" for o in admin.list_organisations()) == 1
    for role in ("data_owner", "privacy_officer", "auditor"):
        created = admin.create_principal(f"Seoul {role}", role, organisation=hospital.name)
        assert created.principal.organisation == hospital.name
        with running.client(created.token) as client:
            assert client.whoami().organisation == hospital.name
    maker_org = admin.create_organisation("Acme", "manufacturer")
    assert admin.create_principal("Acme ML", "manufacturer", organisation=maker_org.name).principal.organisation == maker_org.name
    assert admin.create_principal("Platform officer", "privacy_officer", organisation=OPERATOR).principal.organisation == OPERATOR


@pytest.mark.parametrize("kind", [identity_pb2.ORGANISATION_KIND_OPERATOR, identity_pb2.ORGANISATION_KIND_UNSPECIFIED])
def test_create_organisation_refuses_the_operator_and_no_kind(running, kind) -> None:
    request = identity_pb2.CreateOrganisationRequest(request_id="r1", display_name="x", kind=kind)
    assert _violations(running, request, "CreateOrganisation") == (grpc.StatusCode.INVALID_ARGUMENT, ["kind"])


@pytest.mark.parametrize(("role", "kind"), [
    ("data_owner", "manufacturer"), ("data_owner", "operator"),
    ("manufacturer", "hospital"), ("manufacturer", "operator"),
    ("admin", "hospital"), ("admin", "manufacturer"),
    ("privacy_officer", "manufacturer"), ("auditor", "manufacturer"),
])
def test_membership_rules_refuse_with_a_field_violation_and_store_nothing(running, admin, role, kind) -> None:
    organisation = OPERATOR if kind == "operator" else admin.create_organisation(f"a {kind}", kind).name
    before = len(list(admin.list_principals()))
    request = identity_pb2.CreatePrincipalRequest(request_id="m1", display_name="someone", organisation=organisation,
                                                  role=common_pb2.Role.Value(role.upper()))
    code, fields = _violations(running, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["organisation"]
    assert len(list(admin.list_principals())) == before


def test_unknown_or_malformed_organisation(running, admin) -> None:
    assert _error(lambda: admin.create_principal("x", "data_owner", organisation="organisations/nope")).code is grpc.StatusCode.NOT_FOUND
    code, fields = _violations(running, identity_pb2.CreatePrincipalRequest(request_id="m2", display_name="x", role=1, organisation="nope"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["organisation"]


def test_organisation_rpcs_are_admin_only(running) -> None:
    _, token = running.principal(Role.PRIVACY_OFFICER)
    with running.client(token) as officer:
        assert _error(lambda: officer.create_organisation("x", "hospital")).code is grpc.StatusCode.PERMISSION_DENIED
        assert _error(lambda: list(officer.list_organisations())).code is grpc.StatusCode.PERMISSION_DENIED


# --- isolation between two hospitals ---------------------------------------------------------


@dataclass
class Hospital:
    organisation: str
    owner: Client
    colleague: Client   # a second data owner of the same hospital
    officer: Client
    auditor: Client
    dataset: str


@pytest.fixture
def two_hospitals(running, admin, tmp_path) -> Iterator[dict[str, Any]]:
    maker = admin.create_principal("Acme", "manufacturer")
    clients: list[Client] = []

    def hospital(name: str) -> Hospital:
        organisation = admin.create_organisation(name, "hospital").name
        people = [Client(running.address, admin.create_principal(f"{name} {role}", role, organisation=organisation).token)
                  for role in ("data_owner", "data_owner", "privacy_officer", "auditor")]
        clients.extend(people)
        dataset = people[0].upload_dataset(_write_csv(tmp_path / f"{name}.csv", _rows(40, 2)), _schema(), display_name=name).name
        people[2].set_budget(dataset, epsilon=10, delta=1e-5, reason="hospital total")
        people[2].share_dataset(dataset, maker.principal.name, epsilon=4, delta=1e-5, reason="study")
        return Hospital(organisation, *people, dataset=dataset)

    a, b = hospital("Seoul"), hospital("Busan")
    platform = Client(running.address, admin.create_principal("Platform officer", "privacy_officer").token)
    clients.append(platform)
    yield {"a": a, "b": b, "maker": maker.principal.name, "platform": platform}
    for client in clients:
        client.close()


def _cases(h: Hospital, maker: str) -> list[tuple[str, Callable[[Client], object], str]]:
    """(RPC, a call on hospital `h`'s dataset, which of h's principals makes it)."""
    d = h.dataset
    return [
        ("GetDataset", lambda c: c.get_dataset(d), "owner"),
        ("ShareDataset", lambda c: c.share_dataset(d, maker, epsilon=4, delta=1e-5, reason="again"), "officer"),
        ("SetBudget", lambda c: c.set_budget(d, epsilon=9, delta=1e-5, reason="lower"), "officer"),
        ("SetBudget/share", lambda c: c.set_budget(d, epsilon=3, delta=1e-5, reason="lower", manufacturer=maker), "officer"),
        ("GetBudgets", lambda c: c.get_budgets(d), "officer"),
        ("GetBudgets", lambda c: c.get_budgets(d), "auditor"),
        ("SetApprovalPolicy", lambda c: c.set_approval_policy(d, max_epsilon=2, reason="cap"), "officer"),
        ("EstimateCost", lambda c: c.estimate_cost(d, epsilon=1, delta=1e-6, manufacturer=maker), "officer"),
        ("ListLedger", lambda c: list(c.ledger(dataset=d)), "officer"),
        ("ListLedger", lambda c: list(c.ledger(dataset=d)), "auditor"),
        ("SetShareState", lambda c: c.set_share_state(d, maker, "active", reason="unchanged"), "officer"),
        ("SetShareState", lambda c: c.set_share_state(d, maker, "active", reason="unchanged"), "owner"),
        ("DeleteDataset", lambda c: c.delete_dataset(d), "owner"),  # last: it removes the dataset
    ]


def test_every_dataset_rpc_is_not_found_across_organisations_and_answered_at_home(two_hospitals) -> None:
    a, b, maker = two_hospitals["a"], two_hospitals["b"], two_hospitals["maker"]
    for rpc, call, role in _cases(a, maker):
        error = _error(lambda: call(getattr(b, role)))  # noqa: B023 - called at once
        assert error.code is grpc.StatusCode.NOT_FOUND, (rpc, role)
        assert a.dataset.removeprefix("datasets/") not in str(error), (rpc, role)
        call(getattr(a, "colleague" if role == "owner" else role))  # the same call succeeds in a's organisation


def test_listings_show_ones_own_organisation_only(two_hospitals) -> None:
    a, b = two_hospitals["a"], two_hospitals["b"]
    assert [d.name for d in a.colleague.list_datasets()] == [a.dataset]  # a colleague's upload too
    assert a.colleague.get_dataset(a.dataset).row_count > 0  # details, not the schema view
    for role in ("officer", "auditor"):
        assert _datasets_of(getattr(b, role).ledger()) == {b.dataset}
        assert [d.name for d in getattr(b, role).list_datasets()] == [b.dataset]  # the datasets it governs, schema only
    assert {d.name for d in two_hospitals["platform"].list_datasets()} >= {a.dataset, b.dataset}
    assert _datasets_of(two_hospitals["platform"].ledger()) == {a.dataset, b.dataset}  # the operator: all


def _datasets_of(events: Iterator[Any]) -> set[str]:
    """The datasets whose budgets the ledger events name ("datasets/{id}[/manufacturers/{id}]")."""
    return {"/".join(budget.split("/")[:2]) for event in events for budget in event.budgets}


def _entries(lines: list[str]) -> list[AuditEntry]:
    return [AuditEntry(**json.loads(line)) for line in lines]


def test_audit_log_a_hospital_reads_its_own_part_and_verifies_it(two_hospitals) -> None:
    a, b, platform = two_hospitals["a"], two_hospitals["b"], two_hospitals["platform"]
    a_id = a.dataset.removeprefix("datasets/")
    everything = _entries(list(platform.export_audit_log()))
    assert any(a_id in e.target for e in everything)
    for reader in (b.owner, b.officer, b.auditor):
        own = _entries(list(reader.export_audit_log()))
        assert own and not any(a_id in e.to_json() or a.organisation in e.to_json() for e in own)
        assert any(e.target == b.dataset for e in own) and any(e.target == b.organisation for e in own)
        assert all(entry_hash(e) == e.hash for e in own)  # each entry re-hashes offline
        if reader is b.owner:
            continue  # data owners export; verifying the chain is oversight's
        verdict = reader.verify_audit_log()
        assert verdict.ok and verdict.entries == len(own) < len(everything)
        assert (verdict.head_seq, verdict.head_hash) == (own[-1].seq, own[-1].hash)  # an anchor of its own
        assert reader.verify_audit_log(anchor_seq=own[-1].seq, anchor_hash=own[-1].hash).ok
    whole = platform.verify_audit_log()
    assert whole.ok and whole.entries == len(everything)


# Dataset-bearing RPCs whose isolation is tested elsewhere: a manufacturer reaches a dataset only
# through a share (another organisation's unshared dataset is NOT_FOUND: tests/statistics/
# test_stats_e2e.py, test_stats_cohort_e2e.py, tests/jobs/test_jobs_e2e.py); an upload names no
# existing dataset; releases: tests/releases/test_releases_api.py (another hospital's are absent).
ELSEWHERE = {"UploadDataset", "RunQuery", "EstimateQuery", "SubmitTraining", "SubmitEvaluation", "ListReleases"}
LISTINGS = {"ListDatasets"}  # test_listings_show_ones_own_organisation_only


def _names_a_dataset(message: Any, depth: int = 0) -> bool:
    return depth <= 3 and any(
        field.name in ("dataset", "cohort") or (field.message_type is not None and field.message_type.full_name.startswith("cleanroom")
                                                and _names_a_dataset(field.message_type, depth + 1))
        for field in message.fields)


def test_every_dataset_bearing_rpc_has_a_cross_organisation_case() -> None:
    """A new RPC that takes a dataset must join _cases (or say where its isolation is tested)."""
    from tests.api.test_api import ALL_METHODS

    bearing = {m.name for s, m in ALL_METHODS if _names_a_dataset(m.input_type) or s.name == "DatasetService"}
    fake = Hospital("", *([None] * 4), dataset="datasets/x")  # type: ignore[arg-type]
    covered = {rpc.split("/")[0] for rpc, _, _ in _cases(fake, "principals/m")}
    assert bearing == covered | ELSEWHERE | LISTINGS
