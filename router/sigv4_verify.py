"""AWS Signature Version 4 verification for the SageMaker-compatible front.

The expected signature is computed by botocore's own signer (``PooledSigV4Auth``, the class the
sagemaker backend signs with) over exactly the headers the caller says it signed, and compared in
constant time. Any region is accepted (the caller's SDK signs for its configured region); the
service must be ``sagemaker``; the request time must be within 5 minutes of ours.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import cast

from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from multidict import CIMultiDictProxy

from router.backends.sagemaker_wire import SERVICE, PooledSigV4Auth, SigningRequest
from router.errors import Forbidden
from tenancy.models import AwsAccessKey

log = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 300.0
_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_MAX_SIGNERS = 1024
CONTENT_SHA256 = "x-amz-content-sha256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class AwsForbidden(Forbidden):
    """403 with the AWS error code the SDK expects (``aws_code``)."""

    def __init__(self, aws_code: str, message: str) -> None:
        super().__init__(message)
        self.aws_code = aws_code


def invalid_signature(message: str) -> AwsForbidden:
    return AwsForbidden("InvalidSignatureException", message)


def unrecognized(message: str) -> AwsForbidden:
    return AwsForbidden("UnrecognizedClientException", message)


def resolve_secrets(tenant_id: str, keys: tuple[AwsAccessKey, ...]) -> Mapping[str, str]:
    """access key id -> secret, read from each key's environment variable or file now (at every
    config load, so a rotated secret file is picked up by the next reload). A key whose secret
    cannot be read is left out, with a warning: requests signed with it are refused."""
    secrets: dict[str, str] = {}
    for key in keys:
        secret: str | None
        if key.secret_env is not None:
            secret = os.environ.get(key.secret_env)
            where = f"environment variable {key.secret_env}"
        else:
            where = f"file {key.secret_file}"
            try:
                secret = Path(cast(str, key.secret_file)).read_text().strip()
            except OSError as exc:
                log.warning(
                    "tenant=%s access_key_id=%s: %s: %s", tenant_id, key.access_key_id, where, exc
                )
                continue
        if not secret:
            log.warning(
                "tenant=%s access_key_id=%s: no secret in %s; requests signed with it are refused",
                tenant_id,
                key.access_key_id,
                where,
            )
            continue
        secrets[key.access_key_id] = secret
    return secrets


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> SignedRequest:
    if not value.startswith(ALGORITHM + " "):
        raise invalid_signature(f"only {ALGORITHM} signatures are accepted")
    fields: dict[str, str] = {}
    for part in value[len(ALGORITHM) + 1 :].split(","):
        name, _, field = part.strip().partition("=")
        fields[name] = field
    try:
        credential, signed, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
        access_key, date, region, service, terminator = credential.split("/")
    except (KeyError, ValueError):
        raise invalid_signature(
            "Authorization header requires Credential=KEY/DATE/REGION/SERVICE/aws4_request, "
            "SignedHeaders and Signature"
        ) from None
    if terminator != "aws4_request":
        raise invalid_signature("Credential should end in 'aws4_request'")
    return SignedRequest(access_key, date, region, service, tuple(signed.split(";")), signature)


class SigV4Verifier:
    """Verifies requests against a tenant's keys; keeps a signer per (key, region) so the derived
    signing key is computed once a day, not per request."""

    def __init__(self) -> None:
        self._signers: dict[tuple[str, str, str], PooledSigV4Auth] = {}

    def check_header(self, signed: SignedRequest, secrets: Mapping[str, str]) -> str:
        """What can be checked before the body arrives; returns the secret."""
        secret = secrets.get(signed.access_key)
        if secret is None:
            raise unrecognized("The security token included in the request is invalid.")
        if signed.service != SERVICE:
            raise invalid_signature(f"Credential should be scoped to correct service: '{SERVICE}'.")
        return secret

    def verify(
        self,
        signed: SignedRequest,
        secret: str,
        *,
        method: str,
        url: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        now: datetime | None = None,
    ) -> None:
        """Raise ``AwsForbidden`` unless ``signature`` is the one botocore computes."""
        stamp = headers.get("X-Amz-Date", "")
        try:
            when = datetime.strptime(stamp, _TIMESTAMP).replace(tzinfo=UTC)
        except ValueError:
            raise invalid_signature("X-Amz-Date header missing or malformed") from None
        if not stamp.startswith(signed.date):
            raise invalid_signature("Credential date does not match X-Amz-Date")
        skew = ((now or datetime.now(UTC)) - when).total_seconds()
        if abs(skew) > MAX_SKEW_S:
            raise invalid_signature(
                f"Signature expired: {stamp} is more than 5 minutes from the server's time."
            )
        if "host" not in signed.signed_headers:
            raise invalid_signature("the host header must be signed")
        chosen: dict[str, str] = {}
        for name in signed.signed_headers:
            values = headers.getall(name, None)
            if values is None:
                raise invalid_signature(f"signed header {name!r} is missing")
            chosen[name] = ",".join(values)
        payload_hash = chosen.pop(CONTENT_SHA256, None)
        if payload_hash is not None:
            # botocore's signer uses this header's value as the payload hash (looked up by this case).
            if payload_hash != UNSIGNED_PAYLOAD and payload_hash != sha256(body).hexdigest():
                raise invalid_signature("X-Amz-Content-SHA256 does not match the body")
            chosen["X-Amz-Content-SHA256"] = payload_hash
        signer = self._signer(signed.access_key, secret, signed.region)
        request = SigningRequest(method, url, chosen, body)
        request.context["timestamp"] = stamp
        # botocore's signer, given only what SigningRequest has of an AWSRequest.
        as_aws = cast(AWSRequest, request)
        try:
            canonical = signer.canonical_request(as_aws)
            expected = signer.signature(signer.string_to_sign(as_aws, canonical), as_aws)
            # Header bytes that are not UTF-8 arrive as surrogates: no SDK signs those.
            matches = hmac.compare_digest(expected.encode(), signed.signature.encode())
        except UnicodeEncodeError:
            matches = False
        if not matches:
            raise invalid_signature(
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method."
            )

    def _signer(self, access_key: str, secret: str, region: str) -> PooledSigV4Auth:
        key = (access_key, secret, region)
        signer = self._signers.get(key)
        if signer is None:
            if len(self._signers) >= _MAX_SIGNERS:
                self._signers.clear()  # rotated secrets and odd regions: bounded, rebuilt cheaply
            credentials = ReadOnlyCredentials(access_key, secret, None)
            signer = self._signers[key] = PooledSigV4Auth(credentials, region, "")
        return signer
