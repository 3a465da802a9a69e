"""Signed C2PA manifests on what we render, with c2pa-python, and reading them back.

A manifest says: created (`c2pa.created`) by a trained algorithm (IPTC digitalSourceType
`trainedAlgorithmicMedia`), by LockN Bod and its version, and carries our assertion
`PAYLOAD_LABEL` (the session's watermark tag, its mode). No thumbnail (it cost 47 ms and
120 KB a JPEG), no timestamp authority unless one is configured: then, if it cannot be
reached, the file is signed without one and the caller is told (`SignResult.warning`).

Reading reports `Trusted` (valid, chain to a trust anchor we were given), `Valid` (valid,
untrusted signer), `Invalid` (with the validator's codes, e.g. `assertion.bmffHash.mismatch`
after a changed byte), or `none` (no manifest: a re-encode drops it).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import c2pa

from .keys import SIGNING_ALG, Keys

PAYLOAD_LABEL = "org.locknbod.provenance"
GENERATOR = "LockN Bod"


@dataclass(frozen=True)
class SignResult:
    data: bytes
    warning: str | None = None  # e.g. the timestamp authority could not be reached


@dataclass(frozen=True)
class ManifestReading:
    state: str  # "Trusted" | "Valid" | "Invalid" | "none"
    codes: list[str] = field(default_factory=list)  # the validator's failure codes
    payload: dict | None = None  # our assertion's data
    untrusted: bool = False  # valid, but the signer does not chain to a trust anchor


def generator_version() -> str:
    try:
        return version("lockn-bod")
    except PackageNotFoundError:
        return "dev"


def manifest_definition(payload: dict) -> dict:
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": generator_version()}],
        "title": "LockN Bod avatar",
        "assertions": [{"label": PAYLOAD_LABEL, "data": payload}],
    }


def sign(data: bytes, mime_type: str, keys: Keys, payload: dict, tsa_url: str | None = None) -> SignResult:
    """`data` (an MP4 or JPEG) with a signed manifest embedded."""
    try:
        return SignResult(_sign(data, mime_type, keys, payload, tsa_url))
    except c2pa.C2paError as err:
        if tsa_url is None:
            raise
        return SignResult(_sign(data, mime_type, keys, payload, None),
                          warning=f"timestamp authority {tsa_url} failed ({err}); signed without a timestamp")


def _sign(data: bytes, mime_type: str, keys: Keys, payload: dict, tsa_url: str | None) -> bytes:
    info = c2pa.C2paSignerInfo(getattr(c2pa.C2paSigningAlg, SIGNING_ALG), keys.chain_pem, keys.key_pem,
                               tsa_url.encode() if tsa_url else None)
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    signer = c2pa.Signer.from_info(info)
    builder = c2pa.Builder(manifest_definition(payload), context=context)
    builder.set_intent(c2pa.C2paBuilderIntent.CREATE, c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA)
    out = io.BytesIO()
    builder.sign(signer, mime_type, io.BytesIO(data), out)
    return out.getvalue()


def read(data: bytes, mime_type: str, trust_pem: bytes | None = None) -> ManifestReading:
    """The manifest's state, validated offline; `trust_pem` anchors (our CA) make it Trusted."""
    settings: dict = {"verify": {"remote_manifest_fetch": False}}
    if trust_pem:
        settings["trust"] = {"user_anchors": trust_pem.decode()}
    try:
        reader = c2pa.Reader(mime_type, io.BytesIO(data), context=c2pa.Context.from_dict(settings))
        report = json.loads(reader.json())
    except c2pa.C2paError:
        return ManifestReading("none")  # no manifest (c2pa raises when it finds none)
    return _reading(report)


def _reading(report: dict) -> ManifestReading:
    active = report.get("manifests", {}).get(report.get("active_manifest", ""), {})
    payload = next((a.get("data") for a in active.get("assertions", []) if a.get("label") == PAYLOAD_LABEL), None)
    statuses = report.get("validation_status") or []
    codes = [s.get("code", "") for s in statuses]
    untrusted = "signingCredential.untrusted" in codes
    state = report.get("validation_state") or ("Invalid" if codes else "Valid")
    failures = [c for c in codes if c != "signingCredential.untrusted"]
    return ManifestReading(state=state, codes=failures, payload=payload, untrusted=untrusted)
