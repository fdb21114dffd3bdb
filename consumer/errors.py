"""The domain error hierarchy. `consumer.app.edge_middleware` maps it to HTTP answers in one place."""

from __future__ import annotations


class ConsumerError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code


class ConfigError(ConsumerError):
    """The configuration is invalid; the message names the field."""

    code = "invalid_config"


class BadRequest(ConsumerError):
    """A query parameter of the read API is invalid (never used for webhook content)."""

    status = 400
    code = "bad_request"


class AuthError(ConsumerError):
    """No valid credentials: 401, with a bounded ``reason`` for metrics.

    ``challenge`` replaces the consumer's own ``WWW-Authenticate`` value (the forward-auth answers with
    the registry token server's challenge, which docker and skopeo follow).
    """

    status = 401
    code = "invalid_token"

    def __init__(self, reason: str, detail: str = "", *, challenge: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.challenge = challenge

    def with_challenge(self, challenge: str) -> AuthError:
        """The same error (same class, reason and detail) answering with ``challenge``."""
        return type(self)(self.reason, self.detail, challenge=challenge)


class ForbiddenError(AuthError):
    """Valid credentials without the needed scope or access: 403."""

    status = 403
    code = "insufficient_scope"


class PayloadTooLarge(ConsumerError):
    """A request body above the configured limit: 413, and the connection is closed."""

    status = 413
    code = "payload_too_large"


class NotFound(ConsumerError):
    """The repository, tag or digest is not in the index."""

    status = 404
    code = "not_found"


class StoreUnavailable(ConsumerError):
    """Redis cannot be reached: 503, so that the registry redelivers and auth fails closed."""

    status = 503
    code = "store_unavailable"


class RegistryError(ConsumerError):
    """The registry refused or failed a request of the consumer's (after retries, where retrying helps)."""

    status = 502
    code = "registry_error"

    def __init__(self, detail: str, *, registry_status: int | None = None, registry_code: str | None = None) -> None:
        super().__init__(detail)
        self.registry_status = registry_status
        self.registry_code = registry_code


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, or kept answering 5xx."""

    code = "registry_unavailable"


class RegistryAuthError(RegistryError):
    """The registry refused the consumer's credentials (401/403, or the token service did)."""

    code = "registry_auth_failed"


class TagDeleteUnsupported(RegistryError):
    """The registry cannot delete a tag by name (distribution 2.x, or deletes disabled)."""

    code = "tag_delete_unsupported"


class RegistryNotConfigured(ConsumerError):
    """An operation needs the ``registry:`` section, and there is none."""

    status = 409
    code = "registry_not_configured"
