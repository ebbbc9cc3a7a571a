"""Gateway settings (``GATEWAY_`` environment variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """How the gateway serves, buffers prediction events and keeps feedback records."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["gateway"]
    """HTTP port of the gateway."""
    max_batch: int = Field(1000, ge=1)
    """Most instances one predict request may carry (more → 413)."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body accepted, in bytes (more → 413 before parsing)."""
    shadow_share: float = Field(0.0, ge=0, le=1)
    """Share of champion-answered requests the challenger also scores, unseen (shadow traffic)."""
    shadow_max_in_flight: int = Field(4, ge=1)
    """Most shadow scorings running at once; beyond it a mirror is skipped (counted)."""
    event_buffer: int = Field(10_000, ge=1)
    """Prediction events held for publishing; the oldest are dropped beyond this."""
    publish_batch: int = Field(500, ge=1)
    """Most prediction events published (and recorded) in one drain step."""
    publish_linger_ms: float = Field(20.0, ge=0)
    """How long prediction events may wait to join a batch before they are sent."""
    publish_timeout_s: float = Field(10.0, gt=0)
    """How long one drain step may wait for Kafka and Redis before giving up on it."""
    feedback_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    """How long a prediction can receive feedback, in seconds."""
    max_loaded_models: int = Field(64, ge=1)
    """Most models held in memory; beyond it the least recently used is unloaded (the default
    model never is) and loaded again by its next request."""
    on_demand_load_timeout_s: float = Field(10.0, gt=0)
    """How long a request for an unloaded model waits for it to load; after that it answers
    503 with Retry-After while the load goes on."""
    startup_load_timeout_s: float = Field(60.0, gt=0)
    """How long start-up waits for the first models; loading goes on in the background after."""
    routing_resync_s: float = 15.0
    """Seconds between re-reads of the routing table from Redis (a missed event heals)."""
    log_predictions: bool = True
    """Offer every prediction to the event buffer (off only to measure what logging costs)."""
