"""Operator settings: one object, built once at startup from ICLORA_* environment variables.

Helm values become these variables; nothing else configures the operator.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from iclora_api.objectstore import StoreCredentials


class StoreSettings(BaseSettings):
    """The default object store: artifacts of trainings that name no `spec.output`."""

    model_config = SettingsConfigDict(env_prefix="ICLORA_STORE_", extra="ignore")

    endpoint: str = Field(default="http://127.0.0.1:8333", description="S3 endpoint URL as seen by pods.")
    operator_endpoint: str | None = Field(
        default=None, description="S3 endpoint as seen by the operator, if different from `endpoint`."
    )
    bucket: str = "iclora"
    prefix: str = "runs"
    ledger_prefix: str = Field(
        default="ledger", description="Billing ledger in `bucket`: <ledger_prefix>/<YYYY-MM>/<uid>.json."
    )
    region: str = "us-east-1"
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    # Runs never get the key above: the operator asks the store's STS for a session per run,
    # limited to the run's prefix by an inline session policy (iclora_operator.access).
    sts_endpoint: str | None = Field(
        default=None,
        description="STS endpoint the operator asks for each run's scoped session (AssumeRole). Unset: the "
        "store's own endpoint as the operator sees it (MinIO, Ceph RGW, SeaweedFS); AWS: "
        "https://sts.<region>.amazonaws.com (signed for `region`).",
    )
    sts_role_arn: str | None = Field(
        default=None,
        description="Role the sessions assume (AWS and Ceph RGW: required; a role whose policy allows the "
        "bucket and whose trust policy lets the operator's key assume it). Unset: the operator's own "
        "identity is the session's base (MinIO, SeaweedFS).",
    )
    credentials_duration_seconds: int = Field(
        default=43200, ge=3600, le=43200,
        description="Lifetime asked for each run's session, 1-12 h (AWS caps it at the role's MaxSessionDuration). "
        "One pod can use the store for at most this long; the operator renews the Secret before it ends.",
    )
    credentials_renew_before_seconds: int = Field(
        default=1800, ge=60,
        description="Renew a running training's credentials Secret when less than this is left of its session.",
    )

    @model_validator(mode="after")
    def _ledger_outside_the_runs(self) -> StoreSettings:
        """Runs' sessions reach their own prefix: the ledger must lie outside every one of them."""
        runs, ledger = self.prefix.strip("/"), self.ledger_prefix.strip("/")
        if not ledger or (runs and (ledger == runs or ledger.startswith(runs + "/") or runs.startswith(ledger + "/"))):
            raise ValueError(
                f"store.ledgerPrefix ({self.ledger_prefix!r}) must be non-empty and neither inside nor around "
                f"store.prefix ({self.prefix!r}): runs get write access under store.prefix, never to the ledger")
        return self

    @model_validator(mode="after")
    def _renewal_fits_the_session(self) -> StoreSettings:
        if self.credentials_renew_before_seconds >= self.credentials_duration_seconds:
            raise ValueError(
                f"store.credentialsRenewBeforeSeconds ({self.credentials_renew_before_seconds}) must be less than "
                f"store.credentialsDurationSeconds ({self.credentials_duration_seconds}): a session would be "
                "renewed as soon as it is issued")
        return self

    @property
    def endpoint_for_operator(self) -> str:
        return self.operator_endpoint or self.endpoint

    def operator_credentials(self) -> StoreCredentials:
        """How the operator itself reaches this store (run reports, artifacts, the billing ledger)."""
        return StoreCredentials(self.endpoint_for_operator, self.access_key.get_secret_value(),
                                self.secret_key.get_secret_value(), self.region)


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ICLORA_", env_nested_delimiter="__", extra="ignore")

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty watches all namespaces."
    )
    default_profile: str = Field(default="default", description="TrainingProfile used when none is named.")
    operator_namespace: str = Field(
        default="iclora-system",
        description="The operator's own namespace: where the Secrets that TrainingProfiles name "
        "(model.credentialsSecretRef) live. The chart sets it from the pod's namespace.",
    )
    concurrency_per_namespace: int = Field(
        default=0, ge=0, description="Trainings running at once per namespace without Kueue; 0 = no limit."
    )
    kueue_enabled: bool = Field(
        default=False, description="Leave queue-labelled training Jobs to Kueue (created suspended)."
    )
    reconcile_interval_seconds: float = Field(
        default=5.0, gt=0, description="Ticker interval: how soon a change of a training's Jobs is acted on."
    )
    progress_poll_seconds: float | None = Field(
        default=None, gt=0, description="How often a training's progress is read from the store (3 ticks)."
    )
    resync_seconds: float | None = Field(
        default=None, gt=0,
        description="Full reconcile at least this often when nothing observable changed (12 ticks).",
    )
    report_poll_seconds: float = Field(
        default=30.0, ge=0, description="How often a running preflight's report is looked for in the store."
    )
    stale_progress_seconds: int = Field(default=600, ge=10)
    allow_private_dataset_hosts: bool = Field(
        default=False,
        description="Let the preflight fetch datasets from loopback/private addresses (demo and tests).",
    )
    trusted_dataset_networks: list[str] = Field(
        default_factory=list,
        description=(
            "Host names, addresses and CIDRs that user-named dataset and validation URLs may reach "
            "although private (an in-cluster MinIO/Ceph); the store's own endpoint is always trusted."
        ),
    )
    trainer_command: list[str] = Field(
        default_factory=lambda: ["iclora"], description="Entry point of the trainer image."
    )
    store: StoreSettings = Field(default_factory=StoreSettings)
    metrics_port: int = 8080
    health_port: int = 8081

    def trusted_networks(self) -> tuple[str, ...]:
        """What user-named URLs may reach although private: the platform store's host as the pods
        see it (its endpoint is the administrator's, unlike a tenant's `spec.output` endpoint, which
        stays behind the guard) and `trusted_dataset_networks`."""
        from urllib.parse import urlsplit

        store_host = urlsplit(self.store.endpoint).hostname or ""
        return tuple(dict.fromkeys(h for h in (store_host, *self.trusted_dataset_networks) if h))

    def quiet_tick_due(self, phase: str | None) -> float | None:
        """Seconds after which a tick reconciles a training whose Jobs and spec did not change.

        None: every tick reconciles (phases waiting on something no index shows: a free slot,
        a Secret). Stage reports live in the object store, not in any index: Training polls its
        progress, Preflight looks for its report (written just before the pod ends).
        """
        tick = self.reconcile_interval_seconds
        resync = self.resync_seconds or 12 * tick
        if phase in ("Pending", "Queued"):
            return None
        if phase == "Training":
            return self.progress_poll_seconds or 3 * tick
        if phase == "Preflight":
            return min(self.report_poll_seconds, resync)
        return resync
