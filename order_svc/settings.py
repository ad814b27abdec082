from functools import cached_property

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from saga_kit.personal_data import KeyStore, load_keystore
from saga_kit.settings import ServiceSettings
from saga_kit.urls import base_url


class Settings(ServiceSettings):
    """``ORDER_DATABASE_URL``, ``ORDER_HTTP_PORT`` (8001), ``ORDER_DEADLINE_SECONDS``, …"""

    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", frozen=True)

    http_port: int = Field(default=8001, ge=0, le=65535)
    #: A PENDING order older than this is cancelled with reason ``timeout`` (c4). A request
    #: may ask for its own deadline (``deadline_seconds``) within the API's bounds.
    deadline_seconds: float = Field(default=30.0, gt=0)
    #: How often the deadline sweeper looks for overdue PENDING orders.
    deadline_sweep_interval: float = Field(default=0.5, gt=0)
    #: How often the orders' counts by status are folded to one row per status
    #: (order_svc.statuscounts; seconds): the rows a dashboard's read sums, about 2 per
    #: order transaction in between.
    status_counts_fold_interval: float = Field(default=10.0, gt=0)
    #: Admission control (order_svc.admission): refuse an order whose expected wait exceeds
    #: this share of its deadline, once at least ``admission_min_pending`` sagas are in flight.
    admission_headroom: float = Field(default=0.5, gt=0)
    admission_min_pending: int = Field(default=100, ge=0)
    #: Admission at the door (order_svc.admission.Door): refuse new orders while the
    #: ``admission_door_depth``-th oldest order request in progress has waited longer
    #: than ``admission_door_seconds`` for its answer, or ``admission_door_max`` are in
    #: progress.
    admission_door_seconds: float = Field(default=1.0, gt=0)
    admission_door_depth: int = Field(default=8, ge=1)
    admission_door_max: int = Field(default=128, ge=1)
    #: The most live event streams (``GET /saga-events/stream``: dashboards, ``sagactl
    #: tail``) open at once; one more is a 503 with ``Retry-After`` (order_svc.live).
    event_streams_max: int = Field(default=100, ge=1)
    #: The master key that wraps the customers' data keys (saga_kit.personal_data): a JSON
    #: file ``{"key": base64 of 32 bytes}``. Without one, an order that brings personal data
    #: is refused (503): none is ever stored unsealed.
    pii_master_key_file: str | None = None
    #: Master keys that wrapped data keys before ``pii_master_key_file`` (a rotation in
    #: progress): files as that one, separated by commas. They only unwrap; the rewrap job
    #: wraps every data key under one again with the master key, and logs when none is left.
    pii_previous_master_key_files: str = ""
    #: How often the rewrap job looks for data keys not under the master key (seconds); it
    #: also runs once as the service starts.
    pii_rewrap_interval_seconds: float = Field(default=600.0, gt=0)
    #: False: the rewrap job does nothing (order_svc.masterkeys: the first step of a
    #: rotation across several instances).
    pii_rewrap: bool = True
    #: Where the dashboard reads stock and balances from.
    inventory_url: str = "http://127.0.0.1:8002"
    payment_url: str = "http://127.0.0.1:8003"

    def previous_master_key_files(self) -> list[str]:
        """``pii_previous_master_key_files`` as a list of paths."""
        return [p.strip() for p in self.pii_previous_master_key_files.split(",") if p.strip()]

    @cached_property
    def keystore(self) -> KeyStore | None:
        """The customers' data keys' store of these master keys, read once (``MasterKeyError``
        if a file cannot serve); None without a master key. Once: the HTTP API and the
        rewrap job use the keys the service started with (the job read the files again
        each run, so files edited under a running service had it rewrap every data key with
        a key its API did not have, and a key file destroyed before the restart was a
        traceback each run: an operator trial)."""
        return load_keystore(
            self.pii_master_key_file,
            self.previous_master_key_files(),
            production=self.saga_env == "production",
        )

    @field_validator("inventory_url", "payment_url")
    @classmethod
    def _service_url(cls, url: str) -> str:
        return base_url(url)
