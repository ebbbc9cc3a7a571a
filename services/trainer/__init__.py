"""Trainer: trains a candidate model on recent batches when data arrives or drift is detected."""
