"""Budget answers a person can act on: every refusal names the budget or rule that refused, the
numbers, and what would make the request fit. Through a real server, the SDK and the CLI."""

from __future__ import annotations

import grpc
import pytest

from cleanroom.cli import main as cli
from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.statistics.engine import Query
from tests.api.test_datasets_api import _rows, _schema, _write_csv


def hospital_officer_and_maker(running, tmp_path) -> tuple[str, str, str, str]:
    """A hospital's uploaded dataset, an officer and the manufacturer Acme:
    (dataset name, officer token, Acme's principal id, Acme's token)."""
    _, owner_token = running.principal(Role.DATA_OWNER, "Hospital")
    _, officer_token = running.principal(Role.PRIVACY_OFFICER, "Officer")
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme")
    with Client(running.address, owner_token) as owner:
        dataset = owner.upload_dataset(_write_csv(tmp_path / "d.csv", _rows(40, 2)), _schema()).name
    return dataset, officer_token, maker_id, maker_token


@pytest.fixture
def study(running, tmp_path):
    """A dataset shared with Acme (cap ε 4), and no dataset-wide cap yet: the newcomer's set-up."""
    dataset, officer_token, maker_id, maker_token = hospital_officer_and_maker(running, tmp_path)
    officer, maker = Client(running.address, officer_token), Client(running.address, maker_token)
    officer.share_dataset(dataset, f"principals/{maker_id}", epsilon=4, delta=1e-5, reason="pilot")
    yield {"dataset": dataset, "maker": f"principals/{maker_id}", "maker_id": maker_id, "officer": officer,
           "acme": maker, "running": running, "tokens": {"officer": officer_token, "maker": maker_token}}
    officer.close()
    maker.close()


def _cli(study, who: str, *args: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["--server", study["running"].address, "--token", study["tokens"][who], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _by_rule(estimate) -> dict[str, object]:
    return {d.rule: d for d in estimate.details}


def test_estimate_without_a_dataset_cap_names_it_and_how_to_fit(study, capsys) -> None:
    estimate = study["acme"].estimate_cost(study["dataset"], epsilon=1, delta=1e-6)
    assert not estimate.fits and estimate.decision == "needs_approval"
    rules = _by_rule(estimate)
    assert set(rules) == {"dataset_budget", "auto_approval"}
    whole = rules["dataset_budget"]
    assert whole.outcome == "refused" and whole.budget == study["dataset"] and not whole.cap_set
    assert whole.fits_with.epsilon == 1 and whole.fits_with.delta == pytest.approx(1e-6)
    assert rules["auto_approval"].outcome == "needs_approval" and "approve" in rules["auto_approval"].remedy
    assert len(estimate.reasons) == 2  # the plain sentences carry the same, for simple clients
    for who, extra in (("maker", ()), ("officer", ("--manufacturer", study["maker"]))):
        code, out, _ = _cli(study, who, "privacy", "estimate", study["dataset"], "--epsilon", "1", "--delta", "1e-6", *extra, capsys=capsys)
        assert code == 0
        assert "does NOT fit" in out
        assert f"refused: the dataset-wide budget ({study['dataset']}) has no cap set" in out
        assert "a privacy officer can set a cap of at least ε 1, δ 1e-6" in out
        assert f"cleanroom privacy budget {study['dataset']} --epsilon" in out
        assert "needs approval: ε 1 is above this dataset's auto-approve threshold (none set)" in out
        assert "ask a privacy officer to approve the request" in out


def test_estimate_over_a_share_gives_the_numbers_and_the_cap_that_would_fit(study, capsys) -> None:
    study["officer"].set_budget(study["dataset"], epsilon=10, delta=1e-4, reason="hospital total")
    estimate = study["officer"].estimate_cost(study["dataset"], epsilon=5.5, delta=1e-6, manufacturer=study["maker"])
    share = _by_rule(estimate)["share_budget"]
    assert share.cap_set and share.left.epsilon == 4 and share.requested.epsilon == 5.5
    assert share.fits_with.epsilon == 5.5 and share.fits_with.delta == pytest.approx(1e-5)  # δ had room: unchanged
    assert "dataset_budget" not in _by_rule(estimate)
    code, out, _ = _cli(study, "officer", "privacy", "estimate", study["dataset"], "--manufacturer", study["maker"],
                        "--epsilon", "5.5", "--delta", "1e-6", capsys=capsys)
    assert code == 0
    assert f"refused: the manufacturer's share budget ({study['dataset']}/manufacturers/{study['maker_id']}) has ε 4, δ 1e-5 left " \
           "of its cap ε 4, δ 1e-5; this request needs ε 5.5, δ 1e-6" in out
    assert "a privacy officer can raise that cap to at least ε 5.5, or request at most ε 4, δ 1e-5" in out


def test_a_manufacturer_never_sees_the_dataset_wide_numbers(study) -> None:
    study["officer"].set_budget(study["dataset"], epsilon=2.5, delta=1e-4, reason="hospital total")
    estimate = study["acme"].estimate_cost(study["dataset"], epsilon=3, delta=1e-6)
    whole = _by_rule(estimate)["dataset_budget"]
    assert whole.cap_set and not whole.HasField("left") and not whole.HasField("fits_with")
    assert "2.5" not in whole.message + whole.remedy and "raise that cap" in whole.remedy
    officer_view = _by_rule(study["officer"].estimate_cost(study["dataset"], epsilon=3, delta=1e-6, manufacturer=study["maker"]))
    assert officer_view["dataset_budget"].left.epsilon == 2.5 and officer_view["dataset_budget"].fits_with.epsilon == 3


def test_the_approval_policy_names_its_limits(study, capsys) -> None:
    study["officer"].set_approval_policy(study["dataset"], max_epsilon=2, max_delta=1e-7, reason="small requests only")
    rules = [d for d in study["acme"].estimate_cost(study["dataset"], epsilon=3, delta=1e-6).details if d.rule == "approval_policy"]
    assert [d.outcome for d in rules] == ["refused", "refused"]
    assert rules[0].limit.epsilon == 2 and "request at most ε 2" in rules[0].remedy and "at least ε 3" in rules[0].remedy
    assert rules[1].limit.delta == pytest.approx(1e-7) and "raise the per-request δ limit to at least 1e-6" in rules[1].remedy
    code, out, _ = _cli(study, "maker", "privacy", "estimate", study["dataset"], "--epsilon", "3", "--delta", "1e-6", capsys=capsys)
    assert "refused: ε 3 is above this dataset's per-request limit ε 2" in out


def test_privacy_show_lists_the_share_and_says_no_cap_is_set(study, capsys) -> None:
    for who in ("officer", "maker"):
        code, out, _ = _cli(study, who, "privacy", "show", study["dataset"], capsys=capsys)
        assert code == 0
        assert f"Acme ({study['maker']})" in out and "4 of 4" in out
        assert "whole dataset: NO CAP SET, so nothing can be spent on this dataset" in out
    assert not study["officer"].get_budgets(study["dataset"]).dataset_cap_set
    study["officer"].set_budget(study["dataset"], epsilon=10, delta=1e-4, reason="hospital total")
    code, out, _ = _cli(study, "officer", "privacy", "show", study["dataset"], capsys=capsys)
    assert "NO CAP SET" not in out and "(whole dataset)" in out and "10 of 10" in out


def test_privacy_show_without_any_budget_says_so(running, tmp_path, capsys) -> None:
    _, owner_token = running.principal(Role.DATA_OWNER, "Hospital")
    _, officer_token = running.principal(Role.PRIVACY_OFFICER, "Officer")
    with Client(running.address, owner_token) as owner:
        dataset = owner.upload_dataset(_write_csv(tmp_path / "d.csv", _rows(40, 2)), _schema()).name
    capsys.readouterr()
    assert cli.main(["--server", running.address, "--token", officer_token, "privacy", "show", dataset]) == 0
    out = capsys.readouterr().out
    assert "NO CAP SET" in out and "shares: none" in out and "budget  ε left" not in out  # no empty table


def test_a_refused_statistics_query_names_the_budget_in_words(study, capsys) -> None:
    study["officer"].set_approval_policy(study["dataset"], max_epsilon=3, auto_approve_epsilon=1, reason="routine")
    with pytest.raises(CleanroomClientError) as refused:
        study["acme"].run_query(study["dataset"], Query(kind="count", epsilon=0.5))
    error = refused.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert f"the dataset-wide budget ({study['dataset']}) has no cap set" in error.message
    assert [(v.field, v.description.startswith("to go ahead, a privacy officer can set a cap of at least ε 0.5"))
            for v in error.violations] == [(study["dataset"], True)]
    code, _, err = _cli(study, "maker", "stats", "count", study["dataset"], "--epsilon", "0.5", capsys=capsys)
    assert code != 0 and "the dataset-wide budget" in err and "no cap set" in err and "Traceback" not in err


def test_a_refused_approval_names_the_share_with_its_numbers(study) -> None:
    study["officer"].set_budget(study["dataset"], epsilon=10, delta=1e-4, reason="hospital total")
    app = study["running"].app
    maker = app.principals.get(study["maker_id"])
    request = app.approvals.submit(maker, SpendRequest(study["dataset"].removeprefix("datasets/"), maker.id, "training",
                                                       "jobs/x", Privacy.cost(5, 1e-6)))
    with pytest.raises(CleanroomClientError) as refused:
        study["officer"].approve(request.resource_name, "looks fine")
    error = refused.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the manufacturer's share budget" in error.message and "has ε 4, δ 1e-5 left of its cap ε 4, δ 1e-5" in error.message
    assert [v.field for v in error.violations] == [f"{study['dataset']}/manufacturers/{study['maker_id']}"]
    assert "raise that cap to at least ε 5" in error.violations[0].description


def test_a_policy_refusal_names_the_limit_and_the_way_through(study) -> None:
    study["officer"].set_approval_policy(study["dataset"], max_epsilon=2, reason="small requests only")
    app = study["running"].app
    maker = app.principals.get(study["maker_id"])
    with pytest.raises(CleanroomError) as refused:
        app.approvals.submit(maker, SpendRequest(study["dataset"].removeprefix("datasets/"), maker.id, "training", "jobs/y",
                                                 Privacy.cost(3, 1e-6)))
    assert refused.value.message == (
        "the dataset's approval policy refuses this request: ε 3 is above this dataset's per-request limit ε 2. "
        "To go ahead: request at most ε 2, or ask a privacy officer to raise the per-request limit to at least ε 3")
