"""The credentials proof at its fast size (two in-process replicas on one database), and that its
secrets-scan row fails when a token does show up in what a server said."""

from __future__ import annotations

from pathlib import Path

from proof import credentials
from proof.credentials_world import in_process


def test_the_fast_credentials_section_passes_every_check(tmp_path: Path) -> None:
    section = credentials.run(full=False, out=tmp_path)
    rows = [line for line in section.body.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert section.passed, section.body
    assert "**FAILED**" not in section.body
    checks = [row.split("|")[1].strip() for row in rows]
    assert checks == ["failed-authentication limit", "issue", "revocation on every replica", "expiry", "no lock-out", "only admins",
                      "bad input", "metrics", "cost of checking every call", "no secret in any output"]
    assert "0 found" in rows[-1]


def test_a_token_in_a_log_line_fails_the_secrets_row(tmp_path: Path) -> None:
    world = in_process(tmp_path, limit=3, window=60.0)
    try:
        world.said("a careless log line", f"authorization: Bearer {world.admin_token}")
        row = credentials._secrets_scan(world)
    finally:
        world.stop()
    assert not row.passed and "a careless log line" in row.result, row
