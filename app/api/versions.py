"""Which model answers a prediction: the served version, or an older one named by the client.

The GDPR-relevant rule: an older version answers only while it holds none of the forgotten samples. A version
trained before a completed deletion is retired for good (410, naming the request that retired it); it is
unloaded the first time it is refused, and its weights are purged from disk by the housekeeping sweep.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from app.api.deps import AppState
from app.api.serving import Served
from app.db import ledger
from app.db.models import ModelVersion
from app.db.session import transaction
from app.errors import ModelLoadError, NotFound, RetiredVersion, Unavailable


def served_model(state: AppState) -> Served:
    served = state.holder.current  # read once: the whole answer comes from this version
    if served is None:
        raise Unavailable("no model version is loaded yet")
    return served


def _named(state: AppState, version_id: str) -> Served:
    with transaction(state.conn.read) as s:
        version = s.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"no model version {version_id}")
        gone = ledger.retirement(s, version=version)
    if gone is not None:
        state.holder.drop(version_id)
        by = f"deletion request {gone.request_id}" if gone.request_id else "a deletion"
        raise RetiredVersion(f"version {version_id} was trained on samples that {by} forgot (in version "
                             f"{gone.in_version}); it no longer answers", retired_by=gone.request_id,
                             retired_in=gone.in_version)
    if not version.weights_present:
        raise RetiredVersion(f"the weights of version {version_id} were purged", retired_by=None,
                             retired_in=None)
    try:
        return state.holder.named(version)
    except ModelLoadError as e:
        raise Unavailable(f"version {version_id} cannot be loaded: {e}") from None


async def model_for(state: AppState, version_id: str | None) -> Served:
    """The model that answers: the served one unless VERSION_ID names another that may still answer."""
    served = served_model(state)
    if version_id is None or version_id == served.version_id:
        return served
    return await run_in_threadpool(_named, state, version_id)
