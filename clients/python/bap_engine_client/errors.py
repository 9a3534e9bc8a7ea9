"""Exceptions raised by the bap-engine clients.

Every exception derives from :class:`BapEngineError` and carries the same four
attributes, so one ``except`` clause can handle them all:

``code``
    The documented error code (``"RATE_LIMITED"``, ``"ENGINE_NOT_FOUND"``, ...),
    an admit's denial reason for :class:`AdmissionDenied`, or ``None`` when the
    answer was not the API's error envelope (a proxy's page, a network error).
``message``
    The server's human-readable explanation.
``status``
    The HTTP status, or ``None`` when no answer arrived.
``retry_after``
    Seconds to wait before trying again (the ``Retry-After`` header), else
    ``None``.

An orchestrator answer with a known code raises the class of that code (see
:data:`ERRORS_BY_CODE`); an unknown code raises :class:`ApiError` itself. The
classes are grouped by what a caller does about them (``NotFoundError``,
``ConflictError``, ``CapacityError``, ...). ``retryable`` says whether the same
call may succeed if simply repeated a little later.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "BapEngineError",
    "TransportError",
    "ApiError",
    "AuthenticationError",
    "InvalidPlatformKeyError",
    "InvalidAdminKeyError",
    "NotFoundError",
    "EngineNotFoundError",
    "ProductNotFoundError",
    "RouteNotFoundError",
    "RolloutNotFoundError",
    "ConflictError",
    "EngineAlreadyExistsError",
    "EngineAlreadyRunningError",
    "EngineNotRunningError",
    "EngineBusyError",
    "ProductSlugExistsError",
    "RolloutInProgressError",
    "InvalidRequestError",
    "ValidationError",
    "PayloadTooLargeError",
    "MethodNotAllowedError",
    "RateLimitedError",
    "CapacityError",
    "QuotaExceededError",
    "PortExhaustionError",
    "UnavailableError",
    "DatabaseUnavailableError",
    "BackendUnavailableError",
    "BackendFailureError",
    "BootTimeoutError",
    "ImageNotFoundError",
    "BackendError",
    "UpgradeFailedError",
    "InternalError",
    "EngineError",
    "AdmissionDenied",
    "ERRORS_BY_CODE",
    "error_for",
]


class BapEngineError(Exception):
    """Base of every exception the clients raise."""

    #: Whether repeating the same call shortly may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(str(self.status))
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        return f"{head}: {self.message}" if head else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r})"
        )


class TransportError(BapEngineError):
    """No answer arrived: the connection failed or timed out.

    ``status`` and ``code`` are ``None``. The original ``httpx`` exception is
    the ``__cause__``. Admits are safe to repeat (a second admit joins the
    first one's provision or wake), so this is retryable.
    """

    retryable = True


class ApiError(BapEngineError):
    """A non-2xx answer of the orchestrator."""


class AuthenticationError(ApiError):
    """401: the key is wrong, missing, or a rotated key whose grace ended."""


class InvalidPlatformKeyError(AuthenticationError):
    """401 INVALID_PLATFORM_KEY: the ``X-Platform-Key`` is not a product's key."""


class InvalidAdminKeyError(AuthenticationError):
    """401 INVALID_ADMIN_KEY: the ``X-Admin-Key`` is wrong or missing."""


class NotFoundError(ApiError):
    """404: what the call names does not exist (for this product)."""


class EngineNotFoundError(NotFoundError):
    """404 ENGINE_NOT_FOUND: the user has no engine (under this product)."""


class ProductNotFoundError(NotFoundError):
    """404 PRODUCT_NOT_FOUND: no product with that id."""


class RouteNotFoundError(NotFoundError):
    """404 NOT_FOUND: the orchestrator has no such route (an older version?)."""


class RolloutNotFoundError(NotFoundError):
    """404 ROLLOUT_NOT_FOUND: the product has no rollout with that id."""


class ConflictError(ApiError):
    """409: the engine or product is not in a state that allows the call."""


class EngineAlreadyExistsError(ConflictError):
    """409 ENGINE_ALREADY_EXISTS: provision for a user who has an engine."""


class EngineAlreadyRunningError(ConflictError):
    """409 ENGINE_ALREADY_RUNNING: start of a running engine."""


class EngineNotRunningError(ConflictError):
    """409 ENGINE_NOT_RUNNING: stop or rotate-key of an engine that is not running."""


class EngineBusyError(ConflictError):
    """409 ENGINE_BUSY: the engine is changing state (being destroyed or
    re-made); retry shortly."""

    retryable = True


class ProductSlugExistsError(ConflictError):
    """409 PRODUCT_SLUG_EXISTS: a product with that slug is registered."""


class RolloutInProgressError(ConflictError):
    """409 ROLLOUT_IN_PROGRESS: the product has a rollout running or paused;
    finish, resume or abort it before creating another."""


class InvalidRequestError(ApiError):
    """4xx: the request itself is wrong; repeating it cannot help."""


class ValidationError(InvalidRequestError):
    """422 VALIDATION_ERROR: a bad field (``user_id``, policy value, filter...)."""


class PayloadTooLargeError(InvalidRequestError):
    """413 PAYLOAD_TOO_LARGE: the body exceeds the orchestrator's limit."""


class MethodNotAllowedError(InvalidRequestError):
    """405 METHOD_NOT_ALLOWED: the route exists with another method."""


class RateLimitedError(ApiError):
    """429 RATE_LIMITED: the product's ``rate_limit_rpm`` is used up.

    ``retry_after`` is the exact number of seconds (rounded up) until a slot
    frees; the admit helpers wait for it when it fits their deadline.
    """

    retryable = True


class CapacityError(ApiError):
    """The product or the host is full; only freeing engines or raising
    limits helps, so retrying soon is pointless."""


class QuotaExceededError(CapacityError):
    """429 QUOTA_EXCEEDED: the product's ``max_engines`` (or ``max_running``)
    is reached."""


class PortExhaustionError(CapacityError):
    """503 PORT_EXHAUSTION: the orchestrator has no free host port for a new engine."""


class UnavailableError(ApiError):
    """503: a dependency of the orchestrator is briefly unreachable; retry
    with backoff."""

    retryable = True


class DatabaseUnavailableError(UnavailableError):
    """503 DATABASE_UNAVAILABLE: the orchestrator cannot reach its database."""


class BackendUnavailableError(UnavailableError):
    """503 BACKEND_UNAVAILABLE: the orchestrator cannot reach Docker (or its backend)."""


class BackendFailureError(ApiError):
    """5xx: the engine could not be started or changed."""


class BootTimeoutError(BackendFailureError):
    """504 BOOT_TIMEOUT: the engine did not become healthy in time; it is now
    ``failed`` and the orchestrator restarts it by itself."""


class ImageNotFoundError(BackendFailureError):
    """502 IMAGE_NOT_FOUND: the engine image cannot be had."""


class BackendError(BackendFailureError):
    """502 BACKEND_ERROR: the backend refused the operation."""


class UpgradeFailedError(BackendFailureError):
    """502 UPGRADE_FAILED: the new engine version did not become healthy, so
    the upgrade was rolled back: the engine is on its previous version with
    its brain as it was. ``message`` carries the engine's own reason."""


class InternalError(ApiError):
    """500 INTERNAL: a fault inside the orchestrator (its logs have the cause)."""


class EngineError(BapEngineError):
    """A non-2xx answer of an engine (not of the orchestrator).

    ``code`` is the engine's error code when it answers with the same
    envelope (the reference engine does: ``INVALID_ENGINE_KEY``,
    ``VALIDATION_ERROR``, ...). A 401 usually means the key was rotated since
    the admit: admit again for the current one.
    """


class AdmissionDenied(BapEngineError):
    """An admit answered ``admitted: false`` where an engine was required.

    ``code`` and ``reason`` are the denial reason (one of
    :data:`bap_engine_client.types.DENIAL_REASONS`); ``status`` is 200, the
    status of the answer.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(_DENIAL_MESSAGES.get(reason, "The engine was not admitted."), code=reason, status=200)
        self.reason = reason


_DENIAL_MESSAGES = {
    "engine_not_found": "The user has no engine (admit without auto_provision).",
    "engine_sleeping": "The engine is sleeping (admit without auto_wake).",
    "engine_stopped": "The engine is stopped (admit without auto_wake).",
    "engine_unhealthy": "The engine failed; the orchestrator is restarting it.",
    "engine_busy": "The engine is being destroyed.",
}

#: The exception class of each documented error code.
ERRORS_BY_CODE: Dict[str, Type[ApiError]] = {
    "INVALID_PLATFORM_KEY": InvalidPlatformKeyError,
    "INVALID_ADMIN_KEY": InvalidAdminKeyError,
    "ENGINE_NOT_FOUND": EngineNotFoundError,
    "PRODUCT_NOT_FOUND": ProductNotFoundError,
    "NOT_FOUND": RouteNotFoundError,
    "ENGINE_ALREADY_EXISTS": EngineAlreadyExistsError,
    "ENGINE_ALREADY_RUNNING": EngineAlreadyRunningError,
    "ENGINE_NOT_RUNNING": EngineNotRunningError,
    "ENGINE_BUSY": EngineBusyError,
    "PRODUCT_SLUG_EXISTS": ProductSlugExistsError,
    "VALIDATION_ERROR": ValidationError,
    "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "METHOD_NOT_ALLOWED": MethodNotAllowedError,
    "RATE_LIMITED": RateLimitedError,
    "QUOTA_EXCEEDED": QuotaExceededError,
    "PORT_EXHAUSTION": PortExhaustionError,
    "DATABASE_UNAVAILABLE": DatabaseUnavailableError,
    "BACKEND_UNAVAILABLE": BackendUnavailableError,
    "BOOT_TIMEOUT": BootTimeoutError,
    "IMAGE_NOT_FOUND": ImageNotFoundError,
    "BACKEND_ERROR": BackendError,
    "UPGRADE_FAILED": UpgradeFailedError,
    "ROLLOUT_IN_PROGRESS": RolloutInProgressError,
    "ROLLOUT_NOT_FOUND": RolloutNotFoundError,
    "INTERNAL": InternalError,
}


def error_for(
    status: int, code: Optional[str], message: str, retry_after: Optional[float] = None
) -> ApiError:
    """Build the exception for an orchestrator answer with ``status`` and ``code``.

    An answer without a code (not the API's envelope) with status 502, 503 or
    504 comes from something in front of the orchestrator (a load balancer
    while it restarts) and is an :class:`UnavailableError`.
    """
    cls: Type[ApiError] = ERRORS_BY_CODE.get(code or "", ApiError)
    if code is None and status in (502, 503, 504):
        cls = UnavailableError
    return cls(message, code=code, status=status, retry_after=retry_after)
