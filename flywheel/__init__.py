"""Flywheel's command line and local infrastructure (Kafka, Redis, MLflow without Docker)."""
