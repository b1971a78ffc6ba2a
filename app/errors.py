"""The one exception tree of unlearnd.

Every error a user can cause derives from :class:`UnlearndError`; the CLI prints its
message (no traceback) and the HTTP layer maps each class once to a problem+json status.

    UnlearndError
    ├── UnknownNameError      unknown model / dataset / method / verifier / suite name (lists the valid ones)
    ├── ConfigError           a hyper-parameter that a method does not take, or out of range; a bad option
    │   └── DeviceError       a device that is not valid, or not present on this machine
    ├── DataError             a dataset file is missing or has the wrong format
    ├── ForgetSetError        empty forget list, or ids not in the train split
    ├── ModelLoadError        weights that do not match their meta.json or arch
    ├── CacheMismatchError    a gradient cache computed for other weights or ids
    ├── UnlearnFailed         no setting, the exact retrain included, kept the accuracy budget
    │   ├── OverTimeBudget    a method ran past its deadline (calibration's time budget)
    │   └── ExactJobFailed    an exact retrain's torchrun job wrote no weights (a rank died, timeout, launcher)
    ├── VerifierError         no (or too few) reference models, a split too small to calibrate
    ├── StateError            the service's home and ledger disagree, or the ledger is unreadable
    ├── ServiceError          the deletion service (status + slug → problem+json)
    │   ├── InvalidRequest 422  ├── NotFound 404   ├── Gone 410 (forgotten sample)
    │   │                                          │   └── RetiredVersion 410 (a named version that saw one)
    │   ├── Conflict 409        ├── Unauthorized 401 ├── Forbidden 403
    │   │   └── AlreadyForgotten 409 (a subject an earlier request forgot)
    │   ├── MalformedRequest 400 ├── UnsupportedMediaType 415 ├── PayloadTooLarge 413
    │   └── Unavailable 503     (no model loaded yet, ledger unreachable; app.client: unreachable after retries)
    └── WaitTimedOut          app.client: a request did not reach the awaited state in time (also a TimeoutError)
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class UnlearndError(Exception):
    """Base class of every error unlearnd raises on purpose."""


class UnknownNameError(UnlearndError, KeyError):
    def __init__(self, kind: str, name: str, valid: Sequence[str]) -> None:
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:  # errors cross process boundaries pickled
        return type(self), (self.kind, self.name, self.valid)


class ConfigError(UnlearndError):
    """A method or suite was given parameters it does not accept."""


class DeviceError(ConfigError):
    """A device that is not valid, or not present on this machine."""


class DataError(UnlearndError):
    """A dataset cannot be found or read."""


class ForgetSetError(UnlearndError):
    """The forget set is empty or names ids outside the training split."""

    def __init__(self, message: str, bad_ids: Sequence[int] = ()) -> None:
        self.bad_ids = list(bad_ids)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (str(self), self.bad_ids)


class ModelLoadError(UnlearndError):
    """A model directory is incomplete, or its weights do not match meta/arch."""


class CacheMismatchError(UnlearndError):
    """A gradient cache does not belong to these exact weights and training ids."""


class UnlearnFailed(UnlearndError):
    """No unlearning setting, the exact retrain included, produced a model within the accuracy budget."""


class OverTimeBudget(UnlearnFailed):
    """A method ran past the task's deadline (calibration's time budget); it stops between minibatches."""


class ExactJobFailed(UnlearnFailed):
    """The exact retrain's job did not produce weights: a rank died, it ran past its timeout, or its launcher
    could not start."""


class VerifierError(UnlearndError):
    """A membership verifier cannot be built or used for this model (e.g. no reference models)."""


class StateError(UnlearndError):
    """The service's state cannot be used as it is: a lost or corrupt ledger beside a used home. Starting
    anyway could bring erased data back; the message says how to restore."""


class ServiceError(UnlearndError):
    """An error of the deletion service; `status` and `slug` give its problem+json form."""

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, **extra: object) -> None:
        self.detail, self.extra = detail, extra
        super().__init__(detail)

    def __reduce__(self) -> tuple[object, ...]:  # the extra fields are keywords, which pickle's default drops
        return _rebuild_service_error, (type(self), self.detail, self.extra)


def _rebuild_service_error(cls: type[ServiceError], detail: str, extra: dict[str, object]) -> ServiceError:
    return cls(detail, **extra)


class InvalidRequest(ServiceError):
    status, slug, title = 422, "invalid-request", "The request is not valid"


class MalformedRequest(ServiceError):
    status, slug, title = 400, "malformed-json", "The body is not valid JSON"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "The body's media type is not accepted here"


class NotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class Gone(ServiceError):
    status, slug, title = 410, "gone", "The sample was forgotten"


class RetiredVersion(Gone):
    """A model version named by a client was trained on samples a completed deletion forgot (`retired_by` names
    the request), or its weights were purged."""

    status, slug, title = 410, "version-retired", "The model version no longer answers"


class Conflict(ServiceError):
    status, slug, title = 409, "conflict", "Conflict"


class AlreadyForgotten(Conflict):
    """A deletion by subject whose samples an earlier request already forgot (`request_id` names it)."""

    status, slug, title = 409, "already-forgotten", "Already forgotten"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "A valid API key is required"


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "The API key lacks the scope"


class Unavailable(ServiceError):
    status, slug, title = 503, "unavailable", "Not ready"


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "The body is too large"


class WaitTimedOut(UnlearndError, TimeoutError):
    """app.client: a deletion request did not reach the awaited state in time (`request` holds its last status)."""

    def __init__(self, message: str, request: dict[str, object] | None = None) -> None:
        self.request = request or {}
        super().__init__(message)


_PATH = re.compile(r"(?<![\w.])/(?:[\w.@%+=:,-]+/)*[\w.@%+=:,-]+")


def public_reason(text: str) -> str:
    """A failure reason as API clients see it: server file paths become `<path>` (they say where and how the
    service is installed); operators find the full text in the worker's log."""
    return _PATH.sub("<path>", text)
