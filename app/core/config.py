"""The one Settings object: every knob, from UNLEARND_* environment variables.

`DATABASE_URL` and `REDIS_URL` are also read without the prefix, as operators expect.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.shared import DEVICE_SPEC, PROJECT_ROOT, OnInvalid, OnPartial


def _default_data_dir() -> Path | None:
    shared = PROJECT_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNLEARND_", extra="ignore")

    home: Path = Field(default=PROJECT_ROOT / "var", description="all state of a running service")
    data_dir: Path | None = Field(default_factory=_default_data_dir,
                                  description="where datasets other than digits are looked for")
    chunk_size: int = Field(default=1024, ge=1, description="samples per gradient chunk")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (None: torch's choice)")
    device: str = Field(default="auto", description="where training, unlearning, verification and the worker run: "
                                                    "auto (the first GPU if torch sees one, else the CPU), cpu, "
                                                    "cuda or cuda:N; the API always serves on the CPU")

    # --- service: storage and queue
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("UNLEARND_DATABASE_URL",
                                                                                 "DATABASE_URL"),
                                     description="SQLAlchemy URL; None: SQLite in HOME/ledger.db")
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("UNLEARND_REDIS_URL", "REDIS_URL"),
                                  description="None: `serve` starts an embedded redis-server")
    embedded_redis_port: int = Field(default=6399, description="port of the embedded Redis (127.0.0.1)")
    queue_name: str = Field(default="unlearnd", description="RQ queue and pub/sub channel prefix")

    # --- service: API
    bootstrap_admin_key: str | None = Field(default=None, min_length=32,
                                            description="an admin API key inserted (hashed) at start")
    predict_open: bool = Field(default=False, description="allow /predict (and OIP v2 inference) without a key")
    model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                   description="the model's name in the OIP v2 routes (/v2/models/<name>); None: "
                                               "the name of the model folder the service was published from")
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
                                   description="the API's address as clients see it (https://unlearnd.example): "
                                               "status URLs are built on it; None: relative URLs (the Host "
                                               "header is never trusted)")
    max_body_bytes: int = Field(default=1_048_576, ge=1024,
                                description="largest request body (413 beyond); checked on Content-Length "
                                            "before reading and while streaming")
    ui_session_hours: float = Field(default=12.0, gt=0, description="an operator page login lasts this long")
    subject_key: str | None = Field(default=None, min_length=32,
                                    description="secret of the keyed digest a completed request keeps of its "
                                                "subject; None: HOME/subject.key, made at first start")
    max_delete_ids: int = Field(default=1000, ge=1, description="most sample ids in one POST /delete")
    max_predict_instances: int = Field(default=256, ge=1)
    max_image_pixels: int = Field(default=4_194_304, ge=1,
                                  description="largest image /predict decodes (width × height), checked on its "
                                              "header before decoding")
    retention_days: int = Field(default=30, ge=1, description="due_at = received_at + this")
    audit_page_max: int = Field(default=500, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0, description="how often an API process checks the head")
    ledger_processes: int = Field(default=1, ge=0,
                                  validation_alias=AliasChoices("UNLEARND_LEDGER_PROCESSES",
                                                                "UNLEARND_CONTROL_PROCESSES"),
                                  description="child processes of each API process that do the deletion "
                                               "endpoints' ledger and queue work: in the serving process they "
                                               "would share its GIL with the predictions; 0: its threads")
    serve_threads: int = Field(default=1, ge=1,
                               description="torch intra-op threads per API process: many small concurrent "
                                           "forwards run best on one thread each; scale with --workers")

    # --- service: worker
    batch_max_wait_s: float = Field(default=1.0, ge=0, description="collect requests this long before a batch")
    batch_max_samples: int = Field(default=5000, ge=1, description="a batch starts at once with this many samples")
    lease_s: float = Field(default=300.0, gt=0, description="a claimed batch not done by then is re-queued")
    worker_id: str | None = Field(default=None, max_length=64,
                                  description="this worker's id in the ledger (set by `serve` for its own; else "
                                              "host:pid:random)")
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535,
                                            description="the worker serves its Prometheus metrics on this port "
                                                        "(/metrics, all interfaces); None: not served")
    worker_heartbeat_s: float = Field(default=2.0, gt=0, description="how often a worker records that it is alive")
    worker_timeout_s: float = Field(default=15.0, gt=0,
                                    description="a worker silent this long is dead: its claims go back to pending")
    sweep_interval_s: float = Field(default=10.0, gt=0, description="re-enqueue lost work this often")
    job_timeout_s: float | None = Field(default=None, gt=0,
                                        description="RQ's limit on one job (claim, forget, commit, purge); "
                                                    "None: lease_s + 60. Retrains of derived models and "
                                                    "consolidations run outside jobs, unbounded by it")
    max_attempts: int = Field(default=3, ge=1, description="a batch that errs this many times fails")
    max_worker_deaths: int = Field(default=5, ge=1,
                                   description="a batch whose worker died this many times while it ran fails, "
                                               "with the reason, instead of killing workers forever")
    unlearn_method: str | None = Field(default=None,
                                       description="override the model's calibrated forgetting setting with this "
                                                   "method (iau, out_match, retrain, …)")
    unlearn_params: dict[str, Any] = Field(default_factory=dict,
                                           description="the override method's parameters (JSON)")
    accuracy_floor: float | None = Field(default=None, ge=0, le=1,
                                         description="held-out accuracy a new version needs; None: first "
                                                     "version's accuracy minus max_accuracy_drop")
    max_accuracy_drop: float = Field(default=0.01, ge=0, le=1,
                                     description="held-out accuracy a version may lose against the first "
                                                 "(0.01 = 1 point); also calibration's budget at publication")
    exact_max_accuracy_drop: float = Field(default=0.05, ge=0, le=1,
                                           description="an exact retrain (fallback or consolidation) only has to "
                                                       "stay this close to the first version: it is the model "
                                                       "without the data, the floor only guards a broken run")
    max_unlearn_time_frac: float = Field(default=0.1, gt=0,
                                         description="calibration: a fast setting slower than this share of a "
                                                     "retrain is not worth it")
    holdout_size: int = Field(default=10000, ge=10,
                              description="held-out samples used to validate a version (at most the test split): a "
                                          "1-point budget needs thousands, a paired accuracy difference on 2000 "
                                          "CIFAR-10 samples moves ~0.9 points by chance")
    backtracks: int = Field(default=2, ge=0, description="a setting that fails validation is retried with half "
                                                         "its step, up to this many times, before the next one")
    on_invalid: OnInvalid = Field(default="retrain",
                                                   description="when no fast setting passes validation: retrain "
                                                               "on D_r (exact), or fail the batch")
    on_partial: OnPartial = Field(
        default="consolidate", description="when the verifier still detects the batch after the update: serve it "
                                           "and consolidate exactly at once, retrain now, or record only")
    consolidate_margin_days: float = Field(default=7.0, ge=0,
                                           description="consolidate exactly this long before the oldest "
                                                       "approximately-forgotten request is due")
    consolidate_after: int = Field(default=20, ge=1,
                                   description="consolidate after this many approximate versions in a row")
    partial_exposure: timedelta = Field(default=timedelta(hours=6),
                                        description="the longest a batch the verifier still detects (partial) stays "
                                                    "approximate before its exact retrain: every partial batch "
                                                    "inside the window shares one consolidation; seconds or an "
                                                    "ISO 8601 duration (PT6H); 0: at once; due dates still win")
    exact_tries: int = Field(default=3, ge=1,
                             description="an exact retrain the accuracy floor refuses is trained again from its "
                                         "recipe's next seed (seed + 1, + 2, ...), up to this many retrains in "
                                         "all, in a batch and in a consolidation: a retrain never saw the deleted "
                                         "data whatever its seed, and a short or noisy recipe lands below the floor "
                                         "by chance; the seed kept is in the record")
    exact_nproc: int = Field(default=1, ge=1,
                             description="processes of a consolidation's exact retrain: above 1 it runs as a "
                                         "torchrun job on this host (torch.distributed: gloo on the CPU, nccl on "
                                         "CUDA); 1: in the worker, as always")
    feature_cache: bool = Field(default=True,
                                description="a consolidation's retrain of a model with frozen prefixes trains over "
                                            "its frozen features, computed once (app/ml/training/feature_cache.py); "
                                            "false: the whole model runs every epoch")
    exact_launch: str | None = Field(default=None, min_length=1,
                                     description="a command template that starts the exact retrain elsewhere (a "
                                                 "torchrun on other hosts, a cluster job): {python}, {nproc} and "
                                                 "{job} (the job's folder under the shared home, which the retrain "
                                                 "reads its spec from and writes model.safetensors to) are filled "
                                                 "in; it must run `-m worker.exact {job}` under torchrun")
    exact_timeout_s: float = Field(default=6 * 3600.0, gt=0,
                                   description="an exact retrain job still running after this long is killed and "
                                               "fails as a whole: the served version stays, the requests stay "
                                               "approximate, and it is redone after a backoff")
    rebuild_max_failures: int = Field(default=3, ge=1,
                                      description="a background job that fails this many times in a row is shown "
                                                  "as stuck in /readyz, /metrics and /ui: the rebuild of the "
                                                  "verifier's reference models (also in the waiting requests' "
                                                  "derived_error; retried with backoff, 60 s doubling to 1 h, and at "
                                                  "once by `unlearnd requests retry --rebuild`) and the exact "
                                                  "consolidation (retried after 10 min, or now by `unlearnd "
                                                  "consolidate`)")
    subjects_file: Path | None = Field(default=None, description="JSON {sample_id: subject_id} for the samples")
    verifier: str = Field(default="lira", description="membership verifier that judges each batch (lira, loss)")
    verify_refs: int = Field(default=4, ge=0,
                             description="reference models the verifier trains at publication (LiRA needs ≥ 2; "
                                         "0: no verifier, batches are recorded as unverified). 4 costs about "
                                         "4 × a training run on the shadow split (digits: seconds, CIFAR-10 "
                                         "LeNet5: ~1 minute each on 2 cores)")
    worker_priority: Literal["normal", "low", "idle"] = Field(
        default="low", description="CPU priority of the worker: a deletion has seconds of slack, a prediction "
                                   "milliseconds. low: SCHED_BATCH at nice 10 (Linux; else nice 10), still ~10% of "
                                   "a CPU under full load; idle: SCHED_IDLE, only CPU nothing else wants (a "
                                   "saturated host starves deletions); normal: unchanged")
    debug_commit_delay_s: float = Field(default=0.0, ge=0,
                                        description="testing only: pause between writing weights and commit")
    debug_rebuild_delay_s: float = Field(default=0.0, ge=0,
                                         description="testing only: pause inside a rebuild of derived models")

    # --- `make run` default model
    demo_arch: str = "lenet5"
    demo_alpha: float = 0.1
    demo_max_epochs: int = 100

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_SPEC.fullmatch(v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N (N a GPU index), got {v!r}")
        return v

    @field_validator("partial_exposure", mode="before")
    @classmethod
    def _seconds(cls, v: object) -> object:
        """Plain seconds ("21600") as well as ISO 8601 ("PT6H")."""
        if isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d+)?", v.strip()):
            return float(v)
        return v

    @field_validator("partial_exposure")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError(f"must be a duration ≥ 0 (seconds, or ISO 8601 such as PT6H), got {v.total_seconds():g} s")
        return v

    @property
    def db_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.home / 'ledger.db'}"
        for plain in ("postgresql://", "postgres://"):  # the driver we ship is psycopg 3
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain):]
        return url

    @property
    def job_timeout(self) -> int:
        return int(self.job_timeout_s if self.job_timeout_s is not None else self.lease_s + 60)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def store_dir(self) -> Path:
        return self.home / "store"
