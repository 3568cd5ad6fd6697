"""Simulated attestation keys: a pinned Ed25519 root certifies the launcher's attestation key.

In a real TEE the attestation key is rooted in hardware (AMD's ARK/ASK/VCEK chain, Intel's PCK
certificates, the AWS Nitro root) and never leaves the chip. Here both private keys are ordinary
0600 files: whoever can read them can forge quotes and reports. That is the simulation's limit.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeGuard

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave_sim._schema import FieldReader
from enclave_sim.canonical import canonical_json, format_time, parse_canonical, sha256_hex, utc_now
from enclave_sim.errors import EnclaveSimError, Reason
from enclave_sim.signing import envelope, open_envelope, sign_payload, signature_valid, signed_envelope_bytes

ROOT_KEY_FILE = "root-ed25519.pem"
ATTESTATION_KEY_FILE = "attestation-ed25519.pem"
ATTESTATION_CERTIFICATE_FILE = "attestation-certificate.json"
CERTIFICATE_TYPE = "attestation-certificate"
DEFAULT_SUBJECT = "cleanroom-launcher"
DEFAULT_VALIDITY = timedelta(days=7)


# --------------------------------------------------------------------------- key encodings


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """sha256 of the raw public key: how certificates name their issuer."""
    return sha256_hex(raw_public_key(public_key))


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the pinned root must be an Ed25519 public key")
    return key


# --------------------------------------------------------------------------- private key files


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temporary(path: Path, data: bytes) -> Path:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary


def _write_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Atomically write a 0600 file; without `replace` an existing file wins (a racing creator)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = _write_temporary(path, data)
    try:
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if present: two creators never end with a mixed key
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _read_private_file(path: Path) -> bytes:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise EnclaveSimError(Reason.INSECURE_KEY_FILE, f"{path.name} is not a regular file")
    if info.st_mode & 0o077:
        raise EnclaveSimError(Reason.INSECURE_KEY_FILE, f"{path.name} is readable by others (mode {info.st_mode & 0o777:o}); chmod 600")
    return path.read_bytes()


def _load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_file(path, pem, replace=False)
    return _load_private_key(path)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read_private_file(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path.name} does not hold an Ed25519 private key")
    return key


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class AttestationCertificate:
    """The root's signed statement: `public_key` is an attestation key, valid in [not_before, not_after]."""

    subject: str
    public_key: str  # raw Ed25519 public key, hex
    issuer: str  # key_fingerprint of the root
    not_before: datetime
    not_after: datetime
    signature: str
    simulated: Literal[True] = field(default=True)

    def payload(self) -> dict[str, Any]:
        return {
            "type": CERTIFICATE_TYPE,
            "simulated": True,
            "subject": self.subject,
            "public_key": self.public_key,
            "issuer": self.issuer,
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
        }

    def to_json(self) -> dict[str, Any]:
        return envelope(self.payload(), self.signature)

    @classmethod
    def from_json(cls, obj: Any) -> AttestationCertificate:
        payload, signature = open_envelope(obj, CERTIFICATE_TYPE)
        reader = FieldReader(payload, {"type", "simulated", "subject", "public_key", "issuer", "not_before", "not_after"}, "certificate")
        return cls(
            subject=reader.text("subject"),
            public_key=reader.hex("public_key", 32),
            issuer=reader.hex("issuer", 32),
            not_before=reader.time("not_before"),
            not_after=reader.time("not_after"),
            signature=signature,
        )

    def attestation_public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_key))

    def check(self, root_public_key: Ed25519PublicKey, *, at: datetime) -> None:
        """Both checks below: signed by the pinned root, and valid `at`."""
        self.check_issuer(root_public_key)
        self.check_validity(at)

    def check_issuer(self, root_public_key: Ed25519PublicKey) -> None:
        """Raise UNTRUSTED_CERTIFICATE unless the pinned root signed this certificate."""
        if self.issuer != key_fingerprint(root_public_key) or not signature_valid(root_public_key, self.payload(), self.signature):
            raise EnclaveSimError(Reason.UNTRUSTED_CERTIFICATE, "certificate is not signed by the pinned root")

    def check_validity(self, at: datetime) -> None:
        """Raise CERTIFICATE_EXPIRED unless not_before <= at <= not_after."""
        if not self.not_before <= at <= self.not_after:
            raise EnclaveSimError(Reason.CERTIFICATE_EXPIRED, f"certificate valid {format_time(self.not_before)}..{format_time(self.not_after)}")


# --------------------------------------------------------------------------- the root


class RootAuthority:
    """The simulated hardware root (in a real TEE, the CPU vendor's key). Its public key is pinned."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()

    @classmethod
    def generate(cls) -> RootAuthority:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, directory: Path) -> RootAuthority:
        return cls(_load_or_create_private_key(Path(directory) / ROOT_KEY_FILE))

    @classmethod
    def load(cls, directory: Path) -> RootAuthority:
        """The root already in `directory`, never a new one: an operator exporting the public key
        from a mistyped directory must get an error, not a freshly minted root nobody uses."""
        return cls(_load_private_key(Path(directory) / ROOT_KEY_FILE))

    def public_key_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.public_key)

    def certify(
        self, attestation_public_key: Ed25519PublicKey, *, subject: str, not_after: datetime, not_before: datetime | None = None
    ) -> AttestationCertificate:
        start = (not_before if not_before is not None else utc_now()).replace(microsecond=0)
        end = not_after.replace(microsecond=0)  # certificates carry whole seconds
        if not (subject and end > start):
            raise ValueError("a certificate needs a subject and not_after after not_before")
        unsigned = AttestationCertificate(
            subject=subject,
            public_key=raw_public_key(attestation_public_key).hex(),
            issuer=self.fingerprint,
            not_before=start,
            not_after=end,
            signature="",
        )
        return dataclasses.replace(unsigned, signature=sign_payload(self._private_key, unsigned.payload()))


# --------------------------------------------------------------------------- the launcher's key


class AttestationKey:
    """The launcher's signing key for quotes and reports, with the root's certificate for it."""

    def __init__(self, private_key: Ed25519PrivateKey, certificate: AttestationCertificate) -> None:
        if certificate.public_key != raw_public_key(private_key.public_key()).hex():
            raise ValueError("the certificate is for another key")
        self._private_key = private_key
        self.certificate = certificate

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private_key.public_key()

    @classmethod
    def generate(cls, root: RootAuthority, *, subject: str = DEFAULT_SUBJECT, validity: timedelta = DEFAULT_VALIDITY, now: datetime | None = None) -> AttestationKey:
        """An in-memory key certified by `root` (tests, or a launcher that re-keys at every start)."""
        private_key = Ed25519PrivateKey.generate()
        start = now or utc_now()
        return cls(private_key, root.certify(private_key.public_key(), subject=subject, not_before=start, not_after=start + validity))

    @classmethod
    def load_or_create(
        cls, directory: Path, root: RootAuthority, *, subject: str = DEFAULT_SUBJECT, validity: timedelta = DEFAULT_VALIDITY, now: datetime | None = None
    ) -> AttestationKey:
        """Load the key (creating it if missing) and re-certify when the stored certificate is unusable or ends within validity/4."""
        directory = Path(directory)
        private_key = _load_or_create_private_key(directory / ATTESTATION_KEY_FILE)
        moment = now or utc_now()
        certificate = _read_certificate(directory / ATTESTATION_CERTIFICATE_FILE)
        if not _certificate_usable(certificate, root, private_key.public_key(), (moment, moment + validity / 4)):
            certificate = root.certify(private_key.public_key(), subject=subject, not_before=moment, not_after=moment + validity)
            _write_file(directory / ATTESTATION_CERTIFICATE_FILE, canonical_json(certificate.to_json()), replace=True)
        return cls(private_key, certificate)

    def sign(self, payload: dict[str, Any]) -> str:
        return sign_payload(self._private_key, payload)

    def signed_envelope(self, payload: dict[str, Any]) -> bytes:
        return signed_envelope_bytes(self._private_key, payload)


def _read_certificate(path: Path) -> AttestationCertificate | None:
    try:
        return AttestationCertificate.from_json(parse_canonical(path.read_bytes()))
    except (FileNotFoundError, EnclaveSimError):
        return None  # missing or damaged: the caller issues a fresh one


def _certificate_usable(
    certificate: AttestationCertificate | None, root: RootAuthority, public_key: Ed25519PublicKey, moments: tuple[datetime, ...]
) -> TypeGuard[AttestationCertificate]:
    if certificate is None or certificate.public_key != raw_public_key(public_key).hex():
        return False
    try:
        for moment in moments:
            certificate.check(root.public_key, at=moment)
    except EnclaveSimError:
        return False
    return True
