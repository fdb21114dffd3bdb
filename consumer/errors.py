"""The domain error hierarchy. `consumer.app.error_middleware` maps it to HTTP answers in one place."""

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
    """No valid credentials: 401, with a bounded ``reason`` for metrics."""

    status = 401
    code = "invalid_token"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


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
