"""The server's provenance keys: a local CA, a C2PA signing leaf, and the watermark secret.

Made on first use under `<data_dir>/keys/` (files 0600, the folder 0700):

    ca.pem, ca.key.pem            the local root CA (CA:TRUE, pathlen 0, keyCertSign/cRLSign)
    signer.pem, signer.key.pem    the signing leaf (CA:FALSE, digitalSignature critical,
                                  extendedKeyUsage emailProtection + documentSigning, SKI/AKI):
                                  the profile C2PA validators accept; a leaf without the EKU is
                                  refused at signing
    watermark.secret              32 random bytes: keys the per-frame mark and the session tags

Lifetimes: without a timestamp authority (the default: nothing leaves the machine), a signed
file reads `Invalid` (signingCredential.expired) once its leaf has expired, so the leaf lives
long (LEAF_DAYS) and the CA longer; `rotate_leaf` replaces a leaf that may be compromised,
from the same CA, so files signed before stay Trusted under that CA. On a cluster every node
that signs or marks needs the same folder (shared storage, or copied).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 365 * 30
LEAF_DAYS = 365 * 20
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
REQUIRED_EKU = (ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING)
SIGNING_ALG = "ES256"  # ECDSA P-256 with SHA-256: accepted by every C2PA validator


@dataclass(frozen=True)
class Keys:
    ca_pem: bytes
    chain_pem: bytes  # the leaf, then the CA: what a signer presents
    key_pem: bytes  # the leaf's private key
    watermark_secret: bytes


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "keys"


def ensure_keys(data_dir: Path) -> Keys:
    """The keys, made where missing (a CA and leaf together, the secret on its own). Every
    replica on the machine calls this at start: the first makes them, under a lock."""
    folder = keys_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _make_missing(data_dir, folder)
    return load_keys(data_dir)


def _make_missing(data_dir: Path, folder: Path) -> None:
    if not (folder / "ca.pem").is_file() or not (folder / "ca.key.pem").is_file():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write(folder / "ca.key.pem", _key_pem(ca_key))
        _write(folder / "ca.pem", _ca_certificate(ca_key).public_bytes(serialization.Encoding.PEM))
        (folder / "signer.pem").unlink(missing_ok=True)  # a leaf of another CA is of no use
    if not (folder / "signer.pem").is_file() or not (folder / "signer.key.pem").is_file():
        rotate_leaf(data_dir)
    if not (folder / "watermark.secret").is_file():
        _write(folder / "watermark.secret", secrets.token_bytes(32))


def load_keys(data_dir: Path) -> Keys:
    folder = keys_dir(data_dir)
    ca_pem, leaf_pem = (folder / "ca.pem").read_bytes(), (folder / "signer.pem").read_bytes()
    return Keys(ca_pem=ca_pem, chain_pem=leaf_pem + ca_pem, key_pem=(folder / "signer.key.pem").read_bytes(),
                watermark_secret=(folder / "watermark.secret").read_bytes())


def rotate_leaf(data_dir: Path) -> Path:
    """A new signing leaf from the existing CA (`lockn-bod keys rotate`); returns its path."""
    folder = keys_dir(data_dir)
    ca_key = serialization.load_pem_private_key((folder / "ca.key.pem").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf_certificate(leaf_key, ca_key, ca_cert)
    problems = leaf_problems(leaf)
    if problems:  # never ship a leaf validators would refuse
        raise RuntimeError("generated signing certificate is unusable: " + "; ".join(problems))
    _write(folder / "signer.key.pem", _key_pem(leaf_key))
    _write(folder / "signer.pem", leaf.public_bytes(serialization.Encoding.PEM))
    return folder / "signer.pem"


def leaf_problems(cert: x509.Certificate) -> list[str]:
    """What a C2PA signing leaf lacks of the profile validators accept ([] when usable)."""
    problems = []
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            problems.append("is a CA (needs CA:FALSE)")
    except x509.ExtensionNotFound:
        problems.append("no basicConstraints")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        if not (usage.critical and usage.value.digital_signature):
            problems.append("keyUsage must be critical with digitalSignature")
    except x509.ExtensionNotFound:
        problems.append("no keyUsage")
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        missing = [oid.dotted_string for oid in REQUIRED_EKU if oid not in eku]
        if missing:
            problems.append(f"extendedKeyUsage lacks {', '.join(missing)}")
    except x509.ExtensionNotFound:
        problems.append("no extendedKeyUsage (emailProtection and documentSigning are required)")
    for ext in (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier):
        try:
            cert.extensions.get_extension_for_class(ext)
        except x509.ExtensionNotFound:
            problems.append(f"no {ext.__name__}")
    return problems


# ---- inside ----------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LockN Bod (this server)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # a clock a little behind still agrees
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _ca_certificate(ca_key) -> x509.Certificate:
    name = _name("LockN Bod local provenance CA")
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    return (_builder(name, name, ca_key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(ca_key, hashes.SHA256()))


def _leaf_certificate(leaf_key, ca_key, ca_cert: x509.Certificate) -> x509.Certificate:
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (_builder(_name("LockN Bod signer"), ca_cert.subject, leaf_key.public_key(), LEAF_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(REQUIRED_EKU)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> None:
    """Written 0600 from the start (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
