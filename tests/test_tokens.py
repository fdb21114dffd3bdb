"""Token verification: key rings by kid, the attack set, rotation, and the verified-token cache.

Every forged token here is refused with the reason the metric counts. The revocation part of the
attack set (revoked jti, subject and global cutoffs) is in tests/test_revocation.py, end to end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import jwt.algorithms
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from consumer import tokens
from consumer.errors import AuthError, ConfigError
from consumer.settings import Settings, load_settings
from consumer.tokens import TokenVerifier, jwk_thumbprint, libtrust_key_id, mint
from tests.conftest import JWT_SECRET
from tests.support.registry import TokenIssuer, jwk_thumbprint_key_id, repository_access
from tests.support.signing_keys import AUDIENCE, ISSUER, KeySet, b64url, claims, forge

SECRET_2 = "second-hmac-secret-for-rotation-0123456789abcdef"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return KeySet.create(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def key_settings(keys: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings with the default HS256 secret, an HS256 key from the environment, PEM keys and a JWKS file."""
    monkeypatch.setenv("TEST_HMAC_2", SECRET_2)

    def factory(**auth: Any) -> Settings:
        section: dict[str, Any] = {
            "keys": [{"kid": "hmac-2", "alg": "HS256", "secret_env": "TEST_HMAC_2"}, *keys.key_settings()],
            "jwks_file": str(keys.jwks),
        }
        section.update(auth)
        return load_settings(None, jwt_secret=JWT_SECRET, auth=section)

    return factory


@pytest.fixture
def verifier(key_settings: Callable[..., Settings]) -> TokenVerifier:
    return TokenVerifier.for_consumer(key_settings())


def reason_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value.reason


def hs256(payload: dict[str, Any], secret: str | bytes = JWT_SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


# --- keys that verify --------------------------------------------------------------------------------


def _signed_by_each_key(keys: KeySet) -> dict[str, str]:
    return {
        "default-hs256": hs256(claims()),
        "hs256-kid-from-env": hs256(claims(), SECRET_2, kid="hmac-2"),
        "rs256-pem": jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"}),
        "es256-pem": jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "ec-1"}),
        "eddsa-pem": jwt.encode(claims(), keys.ed, algorithm="EdDSA", headers={"kid": "ed-1"}),
        "ps256-jwks": jwt.encode(claims(), keys.rsa, algorithm="PS256", headers={"kid": "rsa-jwk"}),
        "es256-jwks": jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "ec-jwk"}),
    }


@pytest.mark.parametrize(
    "which", ["default-hs256", "hs256-kid-from-env", "rs256-pem", "es256-pem", "eddsa-pem", "ps256-jwks", "es256-jwks"]
)
def test_every_configured_key_verifies(verifier: TokenVerifier, keys: KeySet, which: str) -> None:
    got = verifier.verify(_signed_by_each_key(keys)[which])
    assert (got.sub, got.jti, got.iss) == ("tester", "jti-0001", ISSUER)
    assert got.has_scope("tokens:admin") and not got.has_scope("tokens")


# --- the attack set ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("kid", [None, "rsa-1"], ids=["no-kid", "rsa-kid"])
def test_alg_none_in_any_spelling(verifier: TokenVerifier, alg: str, kid: str | None) -> None:
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    assert reason_of(verifier, forge(header, claims())) == "bad_algorithm"
    assert reason_of(verifier, forge(header, claims()) + "AAAA") in ("bad_algorithm", "malformed")


def test_hs256_signed_with_the_rsa_public_key_as_secret(verifier: TokenVerifier, keys: KeySet) -> None:
    pem = keys.rsa_pem.read_bytes()
    # PyJWT refuses to sign with a PEM as HMAC secret, so the forgery is made by hand.
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(claims()))}".encode()
    token = signing_input.decode() + "." + b64url(hmac.new(pem, signing_input, hashlib.sha256).digest())
    assert reason_of(verifier, token) == "bad_algorithm"


def test_hs256_with_the_rsa_public_key_and_no_kid_hits_the_hmac_key_and_fails(
    verifier: TokenVerifier, keys: KeySet
) -> None:
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(claims()))}".encode()
    mac = hmac.new(keys.rsa_pem.read_bytes(), signing_input, hashlib.sha256).digest()
    assert reason_of(verifier, signing_input.decode() + "." + b64url(mac)) == "bad_signature"


def test_rs256_token_presented_under_the_hmac_kid(verifier: TokenVerifier, keys: KeySet) -> None:
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "hmac-2"})
    assert reason_of(verifier, token) == "bad_algorithm"


def test_wrong_audience(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(aud="someone-else"))) == "bad_audience"


def test_wrong_issuer(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(iss="https://evil.example"))) == "bad_issuer"


def test_issuer_is_not_matched_by_substring(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(iss="registry"))) == "bad_issuer"


def test_expired(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert reason_of(verifier, hs256(claims(iat=now - 600, nbf=now - 600, exp=now - 31))) == "expired"


def test_expired_within_leeway_is_still_accepted(verifier: TokenVerifier) -> None:
    now = int(time.time())
    verifier.verify(hs256(claims(iat=now - 600, nbf=now - 600, exp=now - 5)))


def test_nbf_in_the_future(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(nbf=int(time.time()) + 300))) == "not_yet_valid"


def test_iat_in_the_future(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert reason_of(verifier, hs256(claims(iat=now + 300, exp=now + 900))) == "not_yet_valid"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "iss", "aud"])
def test_each_required_claim_missing(verifier: TokenVerifier, claim: str) -> None:
    assert reason_of(verifier, hs256(claims(**{claim: None}))) == "missing_claim"


def test_empty_jti_counts_as_missing(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(jti=""))) == "missing_claim"


def test_unknown_kid(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(), kid="retired-key")) == "unknown_kid"


def test_token_without_kid_when_only_kid_keys_exist(key_settings: Callable[..., Settings]) -> None:
    settings = key_settings()
    only_kids = TokenVerifier.for_consumer(settings.model_copy(update={"jwt_secret": None}))
    assert reason_of(only_kids, hs256(claims())) == "unknown_kid"


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../etc/passwd",
        "/dev/null",
        "rsa-1/../hmac-2",
        "' OR '1'='1",
        "rsa-1'; DROP TABLE keys; --",
        "rsa-1\x00",
        "RSA-1",
        " rsa-1",
    ],
)
def test_kid_with_path_or_sql_junk(verifier: TokenVerifier, kid: str) -> None:
    assert reason_of(verifier, hs256(claims(), kid=kid)) == "unknown_kid"


def test_kid_naming_the_configured_key_file(verifier: TokenVerifier, keys: KeySet) -> None:
    assert reason_of(verifier, hs256(claims(), kid=str(keys.rsa_pem))) == "unknown_kid"


def test_oversized_kid(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(), kid="k" * 5000)) == "oversized"


def test_100_kb_token(verifier: TokenVerifier) -> None:
    token = hs256(claims(pad="x" * 100_000))
    assert len(token) > 100_000
    assert reason_of(verifier, token) == "oversized"


def test_oversized_claim(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(sub="s" * 1000))) == "oversized"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        "!!!.$$$.%%%",
        "eyJhbGciOiJIUzI1NiJ9.@@@@.sig",
        b64url('{"alg":"HS256"') + "." + b64url("{}") + ".x",
        b64url("[]") + "." + b64url("{}") + ".x",
        "éé.éé.éé",
    ],
    ids=["no-dots", "short-parts", "bad-alphabet", "bad-payload", "truncated-header-json", "header-not-object",
         "non-ascii"],
)
def test_malformed_base64(verifier: TokenVerifier, token: str) -> None:
    assert reason_of(verifier, token) == "malformed"


def test_payload_that_is_not_json(verifier: TokenVerifier) -> None:
    import hashlib
    import hmac

    signing_input = f"{b64url(json.dumps({'alg': 'HS256'}))}.{b64url(b'not json')}".encode()
    mac = hmac.new(JWT_SECRET.encode(), signing_input, hashlib.sha256).digest()
    assert reason_of(verifier, signing_input.decode() + "." + b64url(mac)) == "malformed"


def test_jwk_passed_as_an_hmac_secret_is_refused_at_startup(keys: KeySet, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(keys.rsa_public_jwk())
    settings = load_settings(None, auth={"keys": [{"kid": "oops", "alg": "HS256", "secret_file": str(secret)}]})
    with pytest.raises(ConfigError, match=r"auth.keys\[0\]: not usable as an HMAC secret"):
        TokenVerifier.for_consumer(settings)


def test_token_hmac_signed_with_the_jwk_of_a_public_key(verifier: TokenVerifier, keys: KeySet) -> None:
    import hashlib
    import hmac

    for kid, expected in (("rsa-jwk", "bad_algorithm"), ("rsa-1", "bad_algorithm"), (None, "bad_signature")):
        header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
        signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(claims()))}".encode()
        mac = hmac.new(keys.rsa_public_jwk().encode(), signing_input, hashlib.sha256).digest()
        assert reason_of(verifier, signing_input.decode() + "." + b64url(mac)) == expected, kid


def test_embedded_jwk_header_is_not_trusted(verifier: TokenVerifier) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    token = jwt.encode(claims(), attacker, algorithm="ES256", headers={"jwk": jwk, "kid": "attacker"})
    assert reason_of(verifier, token) == "unknown_kid"
    token = jwt.encode(claims(), attacker, algorithm="ES256", headers={"jwk": jwk, "kid": "ec-1"})
    assert reason_of(verifier, token) == "bad_signature"


def test_crit_header_is_refused(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(), crit=["exp"], exp=1)) == "malformed"


def test_tampered_payload(verifier: TokenVerifier) -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = f"{header}.{b64url(json.dumps(claims(sub='admin')))}.{signature}"
    assert reason_of(verifier, forged) == "bad_signature"


@pytest.mark.parametrize("value", ["1700000000", True, None, [1], 1e30, -5], ids=str)
def test_non_numeric_dates(verifier: TokenVerifier, value: Any) -> None:
    token = hs256({**claims(), "exp": value})
    assert reason_of(verifier, token) in ("malformed", "missing_claim")


def test_lifetime_above_the_maximum(key_settings: Callable[..., Settings]) -> None:
    verifier = TokenVerifier.for_consumer(key_settings(max_token_lifetime_seconds=3600))
    now = int(time.time())
    assert reason_of(verifier, hs256(claims(iat=now, exp=now + 3601))) == "lifetime_too_long"
    verifier.verify(hs256(claims(iat=now, exp=now + 3600)))


def test_scope_must_be_a_string(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, hs256(claims(scope=["tokens:admin"]))) == "malformed"


# --- rotation ----------------------------------------------------------------------------------------


def test_rotation_old_and_new_keys_verify_then_old_fails_once_removed(tmp_path: Path) -> None:
    old_secret, new_secret = tmp_path / "old", tmp_path / "new"
    old_secret.write_text("old-signing-secret-0123456789-abcdefghijklmnop\n")
    new_secret.write_text("new-signing-secret-0123456789-abcdefghijklmnop\n")
    old = {"kid": "2025-01", "alg": "HS256", "secret_file": str(old_secret)}
    new = {"kid": "2025-07", "alg": "HS256", "secret_file": str(new_secret)}

    both = load_settings(None, auth={"keys": [old, new], "signing_kid": "2025-01"})
    ring = TokenVerifier.for_consumer(both).keyring
    signing_old, signing_new = ring.signing_key("2025-01"), ring.signing_key("2025-07")
    assert isinstance(signing_old.key, bytes) and isinstance(signing_new.key, bytes)
    token_old = mint(both.auth, signing_old.key, sub="registry", scope="events:write", ttl_seconds=600, kid="2025-01")
    token_new = mint(both.auth, signing_new.key, sub="registry", scope="events:write", ttl_seconds=600, kid="2025-07")
    assert jwt.get_unverified_header(token_new)["kid"] == "2025-07"

    verifier = TokenVerifier.for_consumer(both)
    assert verifier.verify(token_old).sub == verifier.verify(token_new).sub == "registry"

    only_new = TokenVerifier.for_consumer(load_settings(None, auth={"keys": [new]}))
    assert only_new.verify(token_new).sub == "registry"
    assert reason_of(only_new, token_old) == "unknown_kid"


def test_rotation_of_asymmetric_keys_through_the_jwks_file(keys: KeySet, tmp_path: Path) -> None:
    token = jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "ec-jwk"})
    with_key = load_settings(None, auth={"jwks_file": str(keys.jwks)})
    assert TokenVerifier.for_consumer(with_key).verify(token).jti == "jti-0001"
    document = json.loads(keys.jwks.read_text())
    rotated = tmp_path / "jwks.json"
    rotated.write_text(json.dumps({"keys": [k for k in document["keys"] if k["kid"] != "ec-jwk"]}))
    without = TokenVerifier.for_consumer(load_settings(None, auth={"jwks_file": str(rotated)}))
    assert reason_of(without, token) == "unknown_kid"


# --- the verified-token cache -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the signature checks the verifier really does (PyJWT's decode, called through)."""
    calls: list[str] = []
    real = tokens.jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(tokens.jwt, "decode", counting)
    return calls


def test_a_verified_token_is_checked_once(key_settings: Callable[..., Settings], decode_calls: list[str]) -> None:
    verifier = TokenVerifier.for_consumer(key_settings())
    token = hs256(claims())
    for _ in range(5):
        assert verifier.verify(token).sub == "tester"
    assert len(decode_calls) == 1 and len(verifier.cache) == 1


def test_failures_are_never_cached(verifier: TokenVerifier, decode_calls: list[str]) -> None:
    bad = hs256(claims(aud="other"))
    for _ in range(3):
        assert reason_of(verifier, bad) == "bad_audience"
    assert len(decode_calls) == 3 and len(verifier.cache) == 0


def test_the_cache_never_serves_a_token_past_its_exp(
    key_settings: Callable[..., Settings], decode_calls: list[str]
) -> None:
    clock = Clock()
    verifier = TokenVerifier.for_consumer(key_settings(leeway_seconds=0), clock=clock)
    exp = int(clock.now) + 100
    token = hs256(claims(exp=exp))
    verifier.verify(token)
    clock.now = exp - 1
    verifier.verify(token)
    assert len(decode_calls) == 1
    clock.now = exp
    assert reason_of(verifier, token) == "expired"
    assert len(decode_calls) == 2 and len(verifier.cache) == 0


def test_a_token_verified_inside_its_leeway_is_not_cached(
    key_settings: Callable[..., Settings], decode_calls: list[str]
) -> None:
    clock = Clock()
    verifier = TokenVerifier.for_consumer(key_settings(leeway_seconds=30), clock=clock)
    token = hs256(claims(iat=int(clock.now) - 100, exp=int(clock.now) - 10))
    verifier.verify(token)
    verifier.verify(token)
    assert len(decode_calls) == 2 and len(verifier.cache) == 0


def test_the_cache_is_bounded_least_recently_used_first(
    key_settings: Callable[..., Settings], decode_calls: list[str]
) -> None:
    verifier = TokenVerifier.for_consumer(key_settings(verify_cache_entries=2))
    a, b, c = (hs256(claims(jti=f"j-{n}")) for n in range(3))
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recently used
    verifier.verify(c)  # evicts b
    assert len(verifier.cache) == 2 and len(decode_calls) == 3
    verifier.verify(a)
    assert len(decode_calls) == 3
    verifier.verify(b)
    assert len(decode_calls) == 4


def test_cache_can_be_turned_off(key_settings: Callable[..., Settings], decode_calls: list[str]) -> None:
    verifier = TokenVerifier.for_consumer(key_settings(verify_cache_entries=0))
    token = hs256(claims())
    verifier.verify(token)
    verifier.verify(token)
    assert len(decode_calls) == 2


# --- loading keys ------------------------------------------------------------------------------------


def _verifier_error(**auth: Any) -> str:
    with pytest.raises(ConfigError) as info:
        TokenVerifier.for_consumer(load_settings(None, auth=auth))
    return info.value.detail


def test_private_key_is_refused_as_a_public_key(keys: KeySet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    private = tmp_path / "private.pem"
    private.write_bytes(keys.ec.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    detail = _verifier_error(keys=[{"kid": "k", "alg": "ES256", "public_key_file": str(private)}])
    assert "private key" in detail


@pytest.mark.parametrize(("alg", "which"), [("ES256", "rsa"), ("RS256", "ec"), ("ES384", "ec"), ("EdDSA", "rsa")])
def test_key_type_must_fit_the_algorithm(keys: KeySet, alg: str, which: str) -> None:
    path = {"rsa": keys.rsa_pem, "ec": keys.ec_pem}[which]
    detail = _verifier_error(keys=[{"kid": "k", "alg": alg, "public_key_file": str(path)}])
    assert "auth.keys[0]" in detail and alg in detail


def test_short_hmac_secret_is_refused_and_never_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("tiny-secret")
    detail = _verifier_error(keys=[{"kid": "k", "alg": "HS256", "secret_file": str(secret)}])
    assert "at least 32 bytes" in detail and "tiny-secret" not in detail


def test_unset_secret_env_names_the_variable() -> None:
    detail = _verifier_error(keys=[{"kid": "k", "alg": "HS256", "secret_env": "NO_SUCH_SECRET_VAR"}])
    assert "NO_SUCH_SECRET_VAR" in detail


def test_secrets_never_appear_in_reprs_or_logs(
    verifier: TokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    shown = repr([verifier.keyring.get(kid) for kid in verifier.keyring.kids])
    assert JWT_SECRET not in shown and SECRET_2 not in shown
    reason_of(verifier, hs256(claims(), "wrong-secret-wrong-secret-wrong-secret!!"))
    assert JWT_SECRET not in caplog.text and SECRET_2 not in caplog.text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "every key needs a kid"),
        ({"kid": "o", "kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}, "only public RSA, EC and OKP"),
        ({"kid": "r", "kty": "RSA", "n": "AQAB", "e": "AQAB"}, "RSA keys need an alg"),
        ({"kid": "e", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "use": "enc"}, "public signing key"),
    ],
)
def test_jwks_entries_are_checked(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    assert message in _verifier_error(jwks_file=str(path))


def test_jwks_private_key_is_refused(keys: KeySet, tmp_path: Path) -> None:
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys.ec))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**private, "kid": "p"}]}))
    assert "public signing key" in _verifier_error(jwks_file=str(path))


def test_duplicate_kids_are_refused(keys: KeySet) -> None:
    with pytest.raises(ConfigError, match="kid may appear only once"):
        load_settings(None, auth={"keys": [keys.key_settings()[0], keys.key_settings()[0]]})


def test_key_settings_need_the_right_source() -> None:
    with pytest.raises(ConfigError, match="RS256 keys need public_key_file"):
        load_settings(None, auth={"keys": [{"kid": "k", "alg": "RS256", "secret_env": "X"}]})
    with pytest.raises(ConfigError, match="exactly one of"):
        load_settings(None, auth={"keys": [{"kid": "k", "alg": "HS256"}]})
    with pytest.raises(ConfigError, match=r"auth.keys.0.alg"):
        load_settings(None, auth={"keys": [{"kid": "k", "alg": "none", "secret_env": "X"}]})


def test_leeway_is_at_most_60_seconds() -> None:
    with pytest.raises(ConfigError, match=r"registry_auth\.leeway_seconds"):
        load_settings(None, registry_auth={"realm": "r", "service": "s", "issuer": "i", "leeway_seconds": 61,
                                           "rootcertbundle": "/nonexistent"})


def test_registry_auth_needs_a_key_and_quotable_realm() -> None:
    with pytest.raises(ConfigError, match="needs at least one key"):
        load_settings(None, registry_auth={"realm": "r", "service": "s", "issuer": "i"})
    with pytest.raises(ConfigError, match=r"registry_auth\.realm"):
        load_settings(None, registry_auth={"realm": 'http://x/"', "service": "s", "issuer": "i",
                                           "rootcertbundle": "/x"})


# --- registry tokens (the forward-auth's key set) ----------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
@pytest.mark.parametrize("kid_style", ["libtrust", "jwk-thumbprint"])
def test_registry_rootcertbundle_keys_get_the_kids_of_registry_2_and_3(tmp_path: Path, algorithm: str,
                                                                       kid_style: str) -> None:
    """2.x names a bundle key by its libtrust id, 3.1+ by its JWK thumbprint: tokens for either verify."""
    issuer = TokenIssuer(tmp_path, algorithm=algorithm, kid_style=kid_style)  # type: ignore[arg-type]
    settings = load_settings(None, registry_auth={"realm": "http://auth/token", "service": issuer.service,
                                                  "issuer": issuer.issuer, "rootcertbundle": str(issuer.cert_path)})
    assert settings.registry_auth is not None
    verifier = TokenVerifier.for_registry(settings.registry_auth)
    public = issuer._key.public_key()
    assert verifier.keyring.kids == [libtrust_key_id(public), jwk_thumbprint_key_id(public)]
    got = verifier.verify(issuer.mint([repository_access("app")]))
    assert got.raw["access"] == [repository_access("app")]
    # A consumer token is not a registry token.
    assert reason_of(verifier, hs256(claims())) == "unknown_kid"


def test_jwk_thumbprint_is_rfc_7638s_own_example() -> None:
    """RFC 7638 section 3.1: the RSA key's thumbprint."""
    n = int.from_bytes(base64.urlsafe_b64decode(
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw" + "=="), "big")
    key = rsa.RSAPublicNumbers(65537, n).public_key()
    assert jwk_thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_jwk_thumbprint_of_ec_keys_drops_leading_zero_bytes_as_distribution_does() -> None:
    # The first private value whose public x coordinate starts with a zero byte: distribution (Go's
    # big.Int.Bytes) hashes 31 bytes for it where a padded encoding would hash 32.
    k = next(k for k in range(1, 5000)
             if ec.derive_private_key(k, ec.SECP256R1()).public_key().public_numbers().x < 1 << 248)
    public = ec.derive_private_key(k, ec.SECP256R1()).public_key()
    assert jwk_thumbprint(public) == jwk_thumbprint_key_id(public)
    padded = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    assert len(base64.urlsafe_b64decode(padded["x"] + "==")) == 32  # what a padded thumbprint would hash
    members = {"crv": "P-256", "kty": "EC", "x": padded["x"], "y": padded["y"]}
    other = base64.urlsafe_b64encode(hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":"))
                                                    .encode()).digest()).decode().rstrip("=")
    assert jwk_thumbprint(public) != other


def test_libtrust_kid_format(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path)
    kid = libtrust_key_id(issuer._key.public_key())
    assert kid == issuer.kid and len(kid.split(":")) == 12


def test_registry_auth_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = TokenIssuer(tmp_path)
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__REALM", "https://auth.example/token")
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__SERVICE", issuer.service)
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__ISSUER", issuer.issuer)
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__ROOTCERTBUNDLE", str(issuer.cert_path))
    settings = load_settings(None)
    assert settings.registry_auth is not None and settings.registry_auth.service == issuer.service


# --- minting -----------------------------------------------------------------------------------------


def test_mint_includes_every_required_claim_and_the_kid(verifier: TokenVerifier) -> None:
    settings = load_settings(None)
    token = mint(settings.auth, SECRET_2.encode(), sub="ci", scope="index:read", ttl_seconds=60, kid="hmac-2")
    payload = jwt.decode(token, SECRET_2, algorithms=["HS256"], audience=AUDIENCE)
    assert {"exp", "iat", "sub", "jti", "iss", "aud", "nbf"} <= payload.keys()
    assert verifier.verify(token).has_scope("index:read")


def test_mint_refuses_a_ttl_the_verifier_would_refuse() -> None:
    settings = load_settings(None, auth={"max_token_lifetime_seconds": 3600})
    with pytest.raises(ValueError, match="max_token_lifetime_seconds"):
        mint(settings.auth, JWT_SECRET.encode(), sub="x", scope="", ttl_seconds=3601)


def test_cli_mint_with_kid(tmp_path: Path) -> None:
    secret = tmp_path / "k2"
    secret.write_text(SECRET_2)
    config = tmp_path / "c.yaml"
    config.write_text(f"auth:\n  keys:\n    - {{kid: k2, alg: HS512, secret_file: {secret}}}\n")
    secret.write_text(SECRET_2 * 2)  # HS512 wants 64 bytes
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")},
           "REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET}
    result = subprocess.run([sys.executable, "-m", "consumer", "--config", str(config), "token", "mint", "--sub",
                             "ci", "--scope", "index:read", "--ttl", "1h", "--kid", "k2"],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token) == {"alg": "HS512", "typ": "JWT", "kid": "k2"}
    settings = load_settings(config, jwt_secret=JWT_SECRET)
    assert TokenVerifier.for_consumer(settings).verify(token).sub == "ci"
