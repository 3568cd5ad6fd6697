"""`cleanroom admin organisation create|list` and `admin principal create --organisation`, run as a
real process against a real server."""

from __future__ import annotations

import re

from tests.server.test_server_process import cli


def test_create_an_organisation_and_a_principal_in_it(running) -> None:
    env = {"CLEANROOM_SERVER": running.address, "CLEANROOM_TOKEN": running.admin_token}
    created = cli("admin", "organisation", "create", "--name", "Seoul General", "--kind", "hospital", env=env).stdout
    match = re.search(r"organisations/\w+", created)
    assert match and "hospital" in created
    organisation = match.group(0)
    listed = cli("admin", "organisation", "list", env=env).stdout
    assert organisation in listed and "Seoul General" in listed and "organisations/operator" in listed
    officer = cli("admin", "principal", "create", "--name", "Seoul officer", "--role", "privacy_officer",
                  "--organisation", organisation, env=env).stdout
    assert f"in {organisation}" in officer
    token = re.search(r"token: (\S+)", officer).group(1)  # type: ignore[union-attr]
    assert organisation in cli("whoami", env={**env, "CLEANROOM_TOKEN": token}).stdout
    refused = cli("admin", "principal", "create", "--name", "x", "--role", "admin", "--organisation", organisation, env=env, check=False)
    assert refused.returncode != 0 and "organisation" in refused.stderr and "Traceback" not in refused.stderr
    assert "--organisation" in cli("admin", "principal", "create", "--help").stdout
