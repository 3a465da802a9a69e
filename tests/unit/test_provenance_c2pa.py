"""Provenance keys and signed C2PA manifests (c2pa-python, offline): what a verifier reports."""
import datetime as dt
import io
import stat

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from deployments.transports.encode import Mp4Writer
from models.provenance import manifest
from models.provenance.keys import Keys, ensure_keys, keys_dir, leaf_problems, load_keys, rotate_leaf

PAYLOAD = {"tag": "00c0ffee00c0ff", "mode": "still"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, ensure_keys(data_dir)


@pytest.fixture(scope="module")
def mp4() -> bytes:
    writer = Mp4Writer()
    writer.add_frames(np.random.default_rng(0).integers(0, 255, (10, 128, 128, 3), np.uint8))
    return writer.finish(np.zeros(6400, np.float32))


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 140)).save(buf, "JPEG")
    return buf.getvalue()


def test_keys_are_made_once_private_and_with_the_leaf_profile_c2pa_accepts(keys):
    data_dir, made = keys
    folder = keys_dir(data_dir)
    for name in ("ca.key.pem", "signer.key.pem", "watermark.secret"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    leaf = x509.load_pem_x509_certificate(made.chain_pem)
    assert leaf_problems(leaf) == [] and len(made.watermark_secret) == 32
    assert ensure_keys(data_dir) == made  # nothing is remade


def test_a_leaf_without_the_extended_key_usage_is_refused(keys):
    data_dir, made = keys
    ca_key = serialization.load_pem_private_key((keys_dir(data_dir) / "ca.key.pem").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(made.ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    bare = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    problems = leaf_problems(bare)
    assert any("extendedKeyUsage" in p for p in problems) and any("keyUsage" in p for p in problems)
    unusable = Keys(made.ca_pem, bare.public_bytes(serialization.Encoding.PEM) + made.ca_pem,
                    key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), made.watermark_secret)
    with pytest.raises(Exception):  # c2pa refuses to sign with it
        manifest.sign(jpeg(), "image/jpeg", unusable, PAYLOAD)


def test_a_signed_mp4_is_trusted_with_our_ca_valid_without_it_and_invalid_once_changed(keys, mp4):
    _, made = keys
    signed = manifest.sign(mp4, "video/mp4", made, PAYLOAD)
    assert signed.warning is None
    trusted = manifest.read(signed.data, "video/mp4", made.ca_pem)
    assert (trusted.state, trusted.codes, trusted.payload) == ("Trusted", [], PAYLOAD)
    untrusted = manifest.read(signed.data, "video/mp4")
    assert untrusted.state == "Valid" and untrusted.untrusted
    changed = bytearray(signed.data)
    changed[-200] ^= 0x01  # a media byte
    invalid = manifest.read(bytes(changed), "video/mp4", made.ca_pem)
    assert invalid.state == "Invalid" and "assertion.bmffHash.mismatch" in invalid.codes
    assert manifest.read(mp4, "video/mp4").state == "none"


def test_a_signed_jpeg_reads_trusted_and_a_changed_one_invalid(keys):
    _, made = keys
    signed = manifest.sign(jpeg(), "image/jpeg", made, PAYLOAD).data
    assert manifest.read(signed, "image/jpeg", made.ca_pem).state == "Trusted"
    changed = bytearray(signed)
    changed[-10] ^= 0x01
    assert manifest.read(bytes(changed), "image/jpeg", made.ca_pem).state == "Invalid"


def test_an_unreachable_timestamp_authority_signs_without_one_and_says_so(keys):
    _, made = keys
    signed = manifest.sign(jpeg(), "image/jpeg", made, PAYLOAD, tsa_url="http://127.0.0.1:9/")
    assert signed.warning and "without a timestamp" in signed.warning
    assert manifest.read(signed.data, "image/jpeg", made.ca_pem).state == "Trusted"


def test_a_rotated_leaf_signs_and_files_signed_before_stay_trusted(tmp_path, mp4):
    old = ensure_keys(tmp_path)
    before = manifest.sign(mp4, "video/mp4", old, PAYLOAD).data
    rotate_leaf(tmp_path)
    new = load_keys(tmp_path)
    assert new.chain_pem != old.chain_pem and new.ca_pem == old.ca_pem
    assert manifest.read(before, "video/mp4", new.ca_pem).state == "Trusted"
    after = manifest.sign(mp4, "video/mp4", new, PAYLOAD).data
    assert manifest.read(after, "video/mp4", new.ca_pem).state == "Trusted"
