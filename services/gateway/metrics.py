"""Prometheus collectors of the gateway."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

_CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class GatewayMetrics:
    """Requests, predictions, their confidence, errors and lost prediction events; every
    collector about a model carries ``model_name`` (the event buffer is shared by all)."""

    requests: Counter
    latency: Histogram
    predictions: Counter
    confidence: Histogram
    predicted_value: Summary
    errors: Counter
    events_dropped: Counter
    events_pending: Gauge
    events_retried: Counter
    model_load_errors: Counter
    routing_rejected: Counter
    feedback: Counter
    crm_updates: Counter
    shadow: Counter
    shadow_latency: Histogram
    models_loaded: Gauge
    model_unloads: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            requests=Counter(
                "prediction_requests_total",
                "Predict requests by model, variant, model version and HTTP status.",
                ["model_name", "variant", "model_version", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "prediction_latency_seconds",
                "Time to answer one predict request (validation and scoring).",
                ["model_name", "variant"],
                registry=registry,
            ),
            predictions=Counter(
                "ml_predictions_total",
                "Predicted rows of a classification model by model, version and predicted class "
                "(a regression model's are ml_predicted_value).",
                ["model_name", "version", "class"],
                registry=registry,
            ),
            confidence=Histogram(
                "ml_prediction_confidence",
                "Probability of the predicted class.",
                ["model_name", "version"],
                buckets=_CONFIDENCE_BUCKETS,
                registry=registry,
            ),
            # A summary, not a histogram: a regressor's scale is its own (no shared buckets);
            # its count is the rows predicted and sum/count the mean prediction, to compare
            # with the mean outcome.
            predicted_value=Summary(
                "ml_predicted_value",
                "Values a regression model predicted, by model and version.",
                ["model_name", "version"],
                registry=registry,
            ),
            errors=Counter(
                "ml_prediction_errors_total",
                "Predict requests that failed, by model and error type.",
                ["model_name", "error_type"],
                registry=registry,
            ),
            events_dropped=Counter(
                "prediction_events_dropped_total",
                "PredictionLogged events lost: a queue over capacity, or left at shutdown.",
                ["reason"],
                registry=registry,
            ),
            events_pending=Gauge(
                "prediction_events_pending",
                "PredictionLogged events queued, by stage (publish to Kafka, record in Redis).",
                ["stage"],
                registry=registry,
            ),
            events_retried=Counter(
                "prediction_events_retried_total",
                "PredictionLogged events put back in their queue after a failed delivery.",
                ["stage"],
                registry=registry,
            ),
            model_load_errors=Counter(
                "model_load_errors_total",
                "Model loads or alias look-ups that failed (the old model kept serving).",
                ["model_name", "role"],
                registry=registry,
            ),
            routing_rejected=Counter(
                "routing_table_rejected_total",
                "Routing tables the registry's aliases contradicted: the aliases served alone.",
                ["model_name"],
                registry=registry,
            ),
            feedback=Counter(
                "feedback_received_total",
                "Feedback requests by model and outcome (recorded, duplicate, unknown, "
                "wrong_model).",
                ["model_name", "outcome"],
                registry=registry,
            ),
            crm_updates=Counter(
                "crm_segment_updates_total",
                "Predicted segments written back to the feature store (written, failed).",
                ["model_name", "outcome"],
                registry=registry,
            ),
            shadow=Counter(
                "shadow_predictions_total",
                "Rows mirrored to the challenger: agree or disagree with the champion, "
                "failed, or skipped (too many mirrors in flight).",
                ["model_name", "outcome"],
                registry=registry,
            ),
            shadow_latency=Histogram(
                "shadow_latency_seconds",
                "Time the challenger took to score one mirrored request.",
                ["model_name"],
                registry=registry,
            ),
            models_loaded=Gauge(
                "gateway_models_loaded",
                "Models held in memory (serving, loading or waiting for a champion), at most "
                "GATEWAY_MAX_LOADED_MODELS.",
                registry=registry,
            ),
            model_unloads=Counter(
                "gateway_model_unloads_total",
                "Models unloaded as the least recently used beyond GATEWAY_MAX_LOADED_MODELS "
                "(reloaded on their next request).",
                ["model_name"],
                registry=registry,
            ),
        )
