"""The ``registry-consumer`` command: ``serve`` and ``token`` (and the commands later issues add)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from consumer.durations import parse_duration_seconds
from consumer.errors import ConfigError
from consumer.settings import Settings, load_settings
from consumer.tokens import mint


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


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
    secret = settings.jwt_secret_bytes()
    if secret is None:
        raise ConfigError("invalid configuration: jwt_secret: required to mint tokens "
                          "(set REGISTRY_CONSUMER_JWT_SECRET or jwt_secret_file)")
    ttl = parse_duration_seconds(args.ttl)
    print(mint(settings.auth, secret, sub=args.sub, scope=args.scope, ttl_seconds=ttl))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; subcommands set ``func``."""
    parser = argparse.ArgumentParser(prog="registry-consumer", description=__doc__)
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (default: $REGISTRY_CONSUMER_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook and API server")
    serve.set_defaults(func=cmd_serve)

    reconcile = sub.add_parser("reconcile", help="repair the index from the registry's catalog, tags and digests")
    reconcile.add_argument("--repository", default=None, help="only this repository (default: all)")
    reconcile.set_defaults(func=cmd_reconcile)

    token = sub.add_parser("token", help="mint, revoke and inspect tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    mint_p = token_sub.add_parser("mint", help="print a signed token")
    mint_p.add_argument("--sub", required=True)
    mint_p.add_argument("--scope", required=True, help='space-separated, e.g. "events:write index:read"')
    mint_p.add_argument("--ttl", required=True, help="lifetime, e.g. 3600s, 12h, 365d")
    mint_p.add_argument("--kid", default=None, help="signing key id (key sets)")
    mint_p.set_defaults(func=cmd_token_mint)
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
