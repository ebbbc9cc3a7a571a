"""Gateway: serves predictions from the champion and challenger, logs them, takes feedback."""
