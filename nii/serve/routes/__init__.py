"""One router per resource: session, scans, system (health, metrics, thresholds, audit)."""
