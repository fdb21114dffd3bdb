"""The ``registry-consumer`` command: serve the webhook and API, check the configuration, reconcile the index
with the registry, and mint, revoke and inspect tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from consumer import __version__
from consumer.durations import parse_duration_seconds
from consumer.errors import AuthError, ConfigError
from consumer.revocation import RevocationStore
from consumer.settings import Settings, load_settings
from consumer.tokens import TokenVerifier, mint, verify_any


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP service until SIGINT/SIGTERM, then shut down gracefully (see consumer.server)."""
    import asyncio

    from consumer.logs import configure_logging
    from consumer.server import serve

    settings = _settings(args)
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0


def cmd_token_mint(args: argparse.Namespace) -> int:
    """Print a signed token, e.g. for the registry's ``notifications.endpoints[].headers``."""
    settings = _settings(args)
    kid = args.kid or settings.auth.signing_kid
    if kid is None and settings.jwt_secret_bytes() is None:
        raise ConfigError("invalid configuration: jwt_secret: required to mint tokens "
                          "(set REGISTRY_CONSUMER_JWT_SECRET or jwt_secret_file, or give --kid of an HMAC key)")
    key = TokenVerifier.for_consumer(settings).keyring.signing_key(kid)
    ttl = parse_duration_seconds(args.ttl)
    assert isinstance(key.key, bytes)  # signing_key returns HMAC keys only
    print(mint(settings.auth, key.key, sub=args.sub, scope=args.scope, ttl_seconds=ttl, kid=key.kid,
               algorithm=key.algorithm))
    return 0


def _trusted_verifiers(settings: Settings) -> list[TokenVerifier]:
    registry = settings.registry_auth
    return [TokenVerifier.for_consumer(settings), *([TokenVerifier.for_registry(registry)] if registry else [])]


async def _with_store(settings: Settings, use: Callable[[RevocationStore], Awaitable[int]]) -> int:
    from consumer.connections import open_redis
    from consumer.rediskeys import RedisKeys

    client = open_redis(settings, role="cli")
    try:
        return await use(RevocationStore.for_settings(client, RedisKeys(settings.key_prefix).revocations, settings))
    finally:
        await client.aclose()


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke one token, a subject's tokens or every token, straight in Redis; print what is in force."""
    import redis.exceptions

    from consumer.tokens_api import RevocationOut, RevokeOut

    settings = _settings(args)
    if args.jti is not None and args.exp is None:
        raise ValueError("--jti needs --exp (the token's exp claim, unix seconds)")

    async def revoke(store: RevocationStore) -> int:
        if args.token is not None:
            try:
                claims, _ = verify_any(_trusted_verifiers(settings), args.token, check_times=False)
            except AuthError as exc:
                print(f"registry-consumer: not a token this consumer trusts ({exc.reason}: {exc.detail}); "
                      "nothing to revoke", file=sys.stderr)
                return 1
            outcome = await store.revoke_token(issuer=claims.iss, jti=claims.jti, exp=claims.exp, subject=claims.sub)
        elif args.jti is not None:
            outcome = await store.revoke_token(issuer=args.iss or settings.auth.issuer, jti=args.jti, exp=args.exp)
        elif args.sub is not None:
            outcome = await store.revoke_subject(args.sub, args.cutoff)
        else:
            outcome = await store.revoke_all(args.cutoff)
        entry = RevocationOut.of(outcome.entry) if outcome.entry is not None else None
        print(RevokeOut(revoked=outcome.changed, entry=entry).model_dump_json())
        return 0

    try:
        return asyncio.run(_with_store(settings, revoke))
    except redis.exceptions.RedisError as exc:
        print(f"registry-consumer: redis unreachable, nothing revoked: {exc}", file=sys.stderr)
        return 1


def cmd_token_inspect(args: argparse.Namespace) -> int:
    """Print a token's header and claims, whether it verifies (and with which keys, or why not), and
    whether it is revoked (and by what). Exit status 0 only when the token is active."""
    import jwt
    import redis.exceptions

    settings = _settings(args)
    report: dict[str, Any] = {"header": None, "claims": None, "valid": False, "verified_by": None,
                              "reason": None, "detail": None, "revoked": None, "revoked_by": None}
    with contextlib.suppress(jwt.PyJWTError):
        report["header"] = jwt.get_unverified_header(args.token)
        report["claims"] = jwt.decode(args.token, options={"verify_signature": False})
    try:
        claims, report["verified_by"] = verify_any(_trusted_verifiers(settings), args.token)
    except AuthError as exc:
        report.update(reason=exc.reason, detail=exc.detail)
        claims = None

    async def revoked(store: RevocationStore) -> int:
        assert claims is not None
        kind = await store.revoked_by(claims)
        report.update(revoked=kind is not None, revoked_by=kind)
        return 0

    if claims is not None:
        report["valid"] = True
        try:
            asyncio.run(_with_store(settings, revoked))
        except redis.exceptions.RedisError as exc:
            report.update(reason="revocation_unknown", detail=f"redis unreachable: {exc}")
        if report["revoked"]:
            report.update(reason="revoked", detail=f"revoked ({report['revoked_by']})")
    report["active"] = report["valid"] and report["revoked"] is False
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["active"] else 1


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare the index with the registry, repair it, and print what was wrong (JSON)."""
    import asyncio
    import json

    from consumer.errors import RegistryError
    from consumer.policy_service import reconcile_once
    from consumer.reconcile import ReconcileBusy

    settings = _settings(args)
    try:
        report = asyncio.run(reconcile_once(settings, args.repository))
    except (RegistryError, ReconcileBusy) as exc:
        print(f"registry-consumer: reconcile failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), sort_keys=True))
    return 0


_SECRET_QUERY = frozenset({"password", "ssl_password"})  # redis-py reads these from the query too


def _redacted_url(url: str) -> str:
    """``url`` with its password hidden, in the user info and in the query."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        url = urlunsplit(parts._replace(
            netloc=f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")))
    # The query by hand: urlunsplit would also turn unix:///path into unix:/path.
    base, question, rest = url.partition("?")
    if not question:
        return url
    query, hash_, fragment = rest.partition("#")
    masked = [(k, "***" if k in _SECRET_QUERY else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return f"{base}?{urlencode(masked, safe='*/')}{hash_}{fragment}"


def cmd_config(args: argparse.Namespace) -> int:
    """Print the configuration the service would run with (file, environment, defaults), secrets hidden."""
    settings = _settings(args)
    effective = settings.model_dump(mode="json")  # SecretStr fields come out as "**********"
    effective["redis_url"] = _redacted_url(settings.redis_url)
    if settings.registry is not None:
        effective["registry"]["url"] = _redacted_url(str(effective["registry"]["url"]))
    print(json.dumps(effective, indent=2, sort_keys=True))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check what the configuration points at (Redis, the registry); exit 1 when something is wrong."""
    from consumer.preflight import run_checks

    findings = asyncio.run(run_checks(_settings(args)))
    if args.json:
        print(json.dumps([f.as_dict() for f in findings]))
    else:
        for finding in findings:
            print(f"{finding.status:<8} {finding.check:<24} {finding.detail}")
    return 1 if any(f.status == "error" for f in findings) else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; subcommands set ``func``."""
    # --config is accepted before or after the subcommand (`registry-consumer serve --config FILE`).
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="YAML config file (default: $REGISTRY_CONSUMER_CONFIG)")
    parser = argparse.ArgumentParser(prog="registry-consumer", description=__doc__, parents=[config])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[config])

    serve = add_parser("serve", help="run the webhook and API server")
    serve.set_defaults(func=cmd_serve)

    config_p = add_parser("config", help="check the configuration and print it as the service would run it "
                                         "(secrets hidden); exit 2 naming the field if it is invalid")
    config_p.set_defaults(func=cmd_config)

    check = add_parser("check", help="check what the configuration points at: Redis (reachable, maxmemory-policy) "
                                     "and the registry (reachable, credentials); exit 1 on an error")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(func=cmd_check)

    reconcile = add_parser("reconcile", help="repair the index from the registry's catalog, tags and digests")
    reconcile.add_argument("--repository", default=None, help="only this repository (default: all)")
    reconcile.set_defaults(func=cmd_reconcile)

    token = add_parser("token", help="mint, revoke and inspect tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)

    def add_token_parser(name: str, help: str) -> argparse.ArgumentParser:
        return token_sub.add_parser(name, help=help, parents=[config])

    mint_p = add_token_parser("mint", help="print a signed token")
    mint_p.add_argument("--sub", required=True)
    mint_p.add_argument("--scope", required=True, help='space-separated, e.g. "events:write index:read"')
    mint_p.add_argument("--ttl", required=True, help="lifetime, e.g. 3600s, 12h, 365d")
    mint_p.add_argument("--kid", default=None, help="signing key id (key sets)")
    mint_p.set_defaults(func=cmd_token_mint)
    revoke_p = add_token_parser("revoke", help="revoke a token, a subject's tokens, or all tokens (in Redis)")
    what = revoke_p.add_mutually_exclusive_group(required=True)
    what.add_argument("--token", help="the token itself (consumer or registry token)")
    what.add_argument("--jti", help="a token's jti (with --exp, and --iss unless it is the consumer's)")
    what.add_argument("--sub", help="every token of this subject issued at or before --cutoff")
    what.add_argument("--all", action="store_true", help="every token issued at or before --cutoff")
    revoke_p.add_argument("--exp", type=int, help="with --jti: the token's exp (unix seconds)")
    revoke_p.add_argument("--iss", help="with --jti: the token's issuer (default: auth.issuer)")
    revoke_p.add_argument("--cutoff", type=int, help="with --sub/--all: unix seconds (default: now)")
    revoke_p.set_defaults(func=cmd_token_revoke)
    inspect_p = add_token_parser("inspect", help="claims, validity, revocation of a token; exit 0 if active")
    inspect_p.add_argument("token")
    inspect_p.set_defaults(func=cmd_token_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m consumer``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"registry-consumer: {exc.detail}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"registry-consumer: {exc}", file=sys.stderr)
        return 2
