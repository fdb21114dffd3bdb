#!/bin/sh
# Start the registry with the notification token taken from a secret file.
#
# Why a script: the registry's config file has no way to read a header value from a file, and compose
# secrets are files (/run/secrets/<name>). Two ways exist to get the token in:
#   1. the environment: distribution v3 overrides one list element by index, so
#      REGISTRY_NOTIFICATIONS_ENDPOINTS_0_HEADERS='{Authorization: ["Bearer <token>"]}' works on registry:3
#      (configuration/parser.go handles reflect.Slice since v3.0.0; 2.8 silently ignores the variable);
#   2. rendering the config file at start.
# Compose cannot turn a file into an environment variable by itself either, so a shell is needed anyway; this
# script does 2: the token then sits in a root-only file on a tmpfs, not in the process environment
# (/proc/<pid>/environ, `docker inspect`), and the same script works with Debian's distribution 2.8 in the
# test suite (tests/test_compose.py).
#
# Usage (compose): entrypoint ["/bin/sh", "/etc/distribution/entrypoint.sh"], command ["registry", "serve"];
# the rendered config path is appended to the command. POSIX sh only (busybox ash in registry:3).
#
# Environment (defaults for registry:3):
#   REGISTRY_CONFIG_TEMPLATE   config with the placeholder  (/etc/distribution/config.yml)
#   REGISTRY_CONFIG_RENDERED   where to write the result    (/run/registry/config.yml, a tmpfs in compose)
#   REGISTRY_NOTIFY_TOKEN_FILE the token                    (/run/secrets/registry_notify_token)
set -eu

template="${REGISTRY_CONFIG_TEMPLATE:-/etc/distribution/config.yml}"
rendered="${REGISTRY_CONFIG_RENDERED:-/run/registry/config.yml}"
token_file="${REGISTRY_NOTIFY_TOKEN_FILE:-/run/secrets/registry_notify_token}"
placeholder='@@REGISTRY_NOTIFY_TOKEN@@'

fail() {
    echo "registry entrypoint: $*" >&2
    exit 1
}

[ -r "$token_file" ] || fail "cannot read the notification token file $token_file (compose secret registry_notify_token; run 'make secrets')"
# Whitespace and line ends around the token are editing artefacts, never part of a token.
token=$(tr -d ' \t\r\n' < "$token_file")
[ -n "$token" ] || fail "$token_file is empty"
# RFC 6750 b64token characters only: nothing in it can break the YAML line it lands in.
case "$token" in
    *[!A-Za-z0-9._~+/=-]*) fail "$token_file does not hold a bearer token (unexpected characters)" ;;
esac
grep -q "$placeholder" "$template" || fail "$template has no $placeholder placeholder"

umask 077
mkdir -p "$(dirname "$rendered")"
tmp="$rendered.tmp.$$"
# Pure shell substitution: no sed/awk, so no character of the token is ever taken as syntax.
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        *"$placeholder"*) printf '%s%s%s\n' "${line%%"$placeholder"*}" "$token" "${line#*"$placeholder"}" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$template" > "$tmp"
mv "$tmp" "$rendered"

[ "$#" -gt 0 ] || set -- registry serve
exec "$@" "$rendered"
