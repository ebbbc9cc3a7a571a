"""Flywheel's common code: event contracts, settings, messaging and observability plumbing."""
