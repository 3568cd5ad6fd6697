"""Simulated root and attestation keys: 0600 files, stable reloads, certificates that chain or fail."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from enclave_sim import AttestationCertificate, AttestationKey, EnclaveSimError, Reason, RootAuthority, canonical_json, load_public_key_pem
from enclave_sim.canonical import utc_now
from enclave_sim.keys import ATTESTATION_CERTIFICATE_FILE, ATTESTATION_KEY_FILE, ROOT_KEY_FILE, raw_public_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_root_key_file_is_private_and_reloads_to_the_same_key(tmp_path: Path) -> None:
    directory = tmp_path / "root"
    first = RootAuthority.load_or_create(directory)
    assert _mode(directory / ROOT_KEY_FILE) == 0o600
    assert _mode(directory) == 0o700
    second = RootAuthority.load_or_create(directory)
    assert second.public_key_pem() == first.public_key_pem()
    assert raw_public_key(load_public_key_pem(first.public_key_pem())) == raw_public_key(first.public_key)
    assert RootAuthority.load_or_create(tmp_path / "other").public_key_pem() != first.public_key_pem()


def test_attestation_key_files_are_private_and_reload_without_recertifying(tmp_path: Path) -> None:
    root = RootAuthority.load_or_create(tmp_path / "root")
    first = AttestationKey.load_or_create(tmp_path / "launcher", root)
    assert _mode(tmp_path / "launcher" / ATTESTATION_KEY_FILE) == 0o600
    assert _mode(tmp_path / "launcher" / ATTESTATION_CERTIFICATE_FILE) == 0o600
    second = AttestationKey.load_or_create(tmp_path / "launcher", root)
    assert raw_public_key(second.public_key) == raw_public_key(first.public_key)
    assert second.certificate == first.certificate
    assert first.certificate.issuer == root.fingerprint


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    RootAuthority.load_or_create(tmp_path)
    os.chmod(tmp_path / ROOT_KEY_FILE, mode)
    with pytest.raises(EnclaveSimError) as caught:
        RootAuthority.load_or_create(tmp_path)
    assert caught.value.reason is Reason.INSECURE_KEY_FILE


def test_a_linked_key_file_is_refused(tmp_path: Path) -> None:
    RootAuthority.load_or_create(tmp_path / "real")
    (tmp_path / "linked").mkdir()
    os.symlink(tmp_path / "real" / ROOT_KEY_FILE, tmp_path / "linked" / ROOT_KEY_FILE)
    with pytest.raises(EnclaveSimError) as caught:
        RootAuthority.load_or_create(tmp_path / "linked")
    assert caught.value.reason is Reason.INSECURE_KEY_FILE


def test_a_certificate_near_its_end_is_renewed_for_the_same_key(tmp_path: Path) -> None:
    root = RootAuthority.generate()
    start = utc_now()
    first = AttestationKey.load_or_create(tmp_path, root, validity=timedelta(days=4), now=start)
    later = AttestationKey.load_or_create(tmp_path, root, validity=timedelta(days=4), now=start + timedelta(days=3, hours=1))
    assert raw_public_key(later.public_key) == raw_public_key(first.public_key)
    assert later.certificate.not_after == start + timedelta(days=7, hours=1)
    stored = AttestationCertificate.from_json(json.loads((tmp_path / ATTESTATION_CERTIFICATE_FILE).read_bytes()))
    assert stored == later.certificate


def test_a_certificate_from_another_root_or_damaged_is_reissued(tmp_path: Path) -> None:
    AttestationKey.load_or_create(tmp_path, RootAuthority.generate())
    new_root = RootAuthority.generate()
    reissued = AttestationKey.load_or_create(tmp_path, new_root)
    assert reissued.certificate.issuer == new_root.fingerprint
    (tmp_path / ATTESTATION_CERTIFICATE_FILE).write_bytes(b"{not json")
    repaired = AttestationKey.load_or_create(tmp_path, new_root)
    repaired.certificate.check(new_root.public_key, at=utc_now())


def test_certificate_check_names_what_failed() -> None:
    root, other = RootAuthority.generate(), RootAuthority.generate()
    now = utc_now()
    certificate = AttestationKey.generate(root, validity=timedelta(hours=1), now=now).certificate
    certificate.check(root.public_key, at=now + timedelta(minutes=30))
    with pytest.raises(EnclaveSimError) as untrusted:
        certificate.check(other.public_key, at=now)
    assert untrusted.value.reason is Reason.UNTRUSTED_CERTIFICATE
    for moment in (now - timedelta(seconds=1), now + timedelta(hours=1, seconds=1)):
        with pytest.raises(EnclaveSimError) as expired:
            certificate.check(root.public_key, at=moment)
        assert expired.value.reason is Reason.CERTIFICATE_EXPIRED


def test_a_certificate_claiming_the_pinned_issuer_but_signed_by_another_root_is_untrusted() -> None:
    pinned, impostor = RootAuthority.generate(), RootAuthority.generate()
    forged = AttestationKey.generate(impostor).certificate
    forged = dataclasses.replace(forged, issuer=pinned.fingerprint)
    with pytest.raises(EnclaveSimError) as caught:
        forged.check(pinned.public_key, at=utc_now())
    assert caught.value.reason is Reason.UNTRUSTED_CERTIFICATE


def test_certificate_json_says_simulated_and_the_parser_insists() -> None:
    certificate = AttestationKey.generate(RootAuthority.generate()).certificate
    obj = certificate.to_json()
    assert b'"simulated":true' in canonical_json(obj)
    assert AttestationCertificate.from_json(obj) == certificate
    for flag in (False, 1, "true", None):
        with pytest.raises(EnclaveSimError) as caught:
            AttestationCertificate.from_json({**obj, "payload": {**obj["payload"], "simulated": flag}})
        assert caught.value.reason is Reason.NOT_SIMULATED_FLAG
    without = {k: v for k, v in obj["payload"].items() if k != "simulated"}
    with pytest.raises(EnclaveSimError) as missing:
        AttestationCertificate.from_json({**obj, "payload": without})
    assert missing.value.reason is Reason.NOT_SIMULATED_FLAG


def test_certify_refuses_an_empty_validity_period() -> None:
    root, now = RootAuthority.generate(), utc_now()
    key = AttestationKey.generate(root).public_key
    for end in (now, now + timedelta(milliseconds=500), now - timedelta(days=1)):  # whole seconds: 0.5 s is empty
        with pytest.raises(ValueError):
            root.certify(key, subject="launcher", not_before=now, not_after=end)


def test_an_attestation_key_refuses_a_certificate_for_another_key() -> None:
    root = RootAuthority.generate()
    mine, theirs = AttestationKey.generate(root), AttestationKey.generate(root)
    with pytest.raises(ValueError):
        AttestationKey(mine._private_key, theirs.certificate)
