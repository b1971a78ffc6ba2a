"""Request and response bodies (they make /docs complete)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app.ml.verify.verdicts import Verdict

RequestState = Literal["pending", "processing", "completed", "rejected", "failed"]
INT64_MAX = 2**63 - 1  # the ledger's integer columns (SQLite and PostgreSQL BIGINT)
# text that is stored (subject ids, idempotency keys, sample ids): no control characters (NUL breaks PostgreSQL's
# text type)
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
SampleId = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)] | Annotated[
    StrictStr, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
# what clients see: the data's own id (app/ids.py), an integer when the data's ids are integers
OwnId = int | str


class Problem(BaseModel):
    """RFC 9457 problem details; some problems add fields (e.g. `unknown_ids`, `errors`)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str


class DeleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_ids: list[SampleId] | None = Field(default=None, description="ids of the samples to forget, as the data "
                                                                        "names them (integers or strings)")
    subject_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=PRINTABLE,
                                   description="forget every sample of this data subject")


class DeleteAccepted(BaseModel):
    id: str
    state: RequestState
    status_url: str
    received_at: datetime
    due_at: datetime
    n_samples: int
    already_forgotten: list[OwnId] = Field(description="ids in the request that were already forgotten")


class Forgetting(BaseModel):
    method: str | None
    exact: bool = Field(description="true once no model the service keeps was trained on the samples: the served "
                                    "model was retrained without them (at once when the batch retrained or the "
                                    "samples were never training data, else after an exact consolidation), and "
                                    "the verifier's reference models too when shadow samples were deleted")
    exact_at: datetime | None = Field(description="when that became true")
    model_exact_at: datetime | None = Field(default=None, description="when a served model retrained without the "
                                                                      "samples was first served")
    derived_pending: bool = Field(default=False, description="deleted shadow samples are still inside the "
                                                             "verifier's reference models; they are being retrained")
    derived_error: str | None = Field(default=None, description="why retraining those models keeps failing (it is "
                                                                "retried with backoff, and by `unlearnd requests "
                                                                "retry`); null while it works")
    verdict: Verdict = Field(description="forgotten | partial | not measurable | unverified: the membership "
                                     "verifier on the batch's forgotten samples after the update")
    gap_closed: float | None = Field(default=None, description="share of the samples' membership signal (set AUC "
                                                               "above 0.5) the update removed")
    over_forgotten: bool | None = Field(description="the samples look less member-like than non-members")
    set_auc_before: float | None = Field(description="forgotten samples against held-out non-members, before")
    set_auc_after: float | None = Field(description="the same after the update; 0.5 is non-member level")
    p_member_after: float | None
    flagged_after: float | None = Field(description="share flagged as members at 5% FPR after the update")
    min_detectable_batch: int | None = Field(description="smallest batch the verifier can judge; None: none")
    n_forget: int | None


class RequestStatus(BaseModel):
    id: str
    state: RequestState
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    sample_ids: list[OwnId]
    subject_id: str | None
    already_forgotten: list[OwnId]
    model_version: str | None = Field(description="the first version that excludes the samples")
    audit_entry: int | None
    reason: str | None
    attempts: int
    exact_scheduled_at: datetime | None = Field(default=None, description="while the served model may still hold "
                                                "the samples: when the exact retrain that removes them is due at "
                                                "the latest (the due date less the margin, or sooner for a partial "
                                                "batch: UNLEARND_PARTIAL_EXPOSURE)")
    forgetting: Forgetting | None = Field(default=None, description="how the batch that served it forgot")


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[list[float]] | list[str] | list[dict[str, float]] = Field(
        description="feature rows, or flattened images, in the data's own scale and layout; a table's rows as "
                    "objects keyed by column name; or base64-encoded PNG or JPEG images")


class Prediction(BaseModel):
    label: int
    class_name: str = Field(description="the label's name, as the training data named it")
    probabilities: list[float]


class PredictResponse(BaseModel):
    model_version: str
    sample_id: OwnId | None = None
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    id: str
    seq: int
    sha256: str
    parent_id: str | None
    created_at: datetime
    weights_present: bool
    metrics: dict[str, Any]


class CurrentModel(ModelInfo):
    serving: str | None = Field(description="the version this API process answers with right now")
    input_layout: list[int]
    input_dtype: str


class AuditItem(BaseModel):
    seq: int
    created_at: str
    batch_id: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditItem]
    total: int
    offset: int
    limit: int
    next: str | None
