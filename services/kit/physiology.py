"""Physiological bounds of telemetry, shared by ingest (it refuses samples outside them) and the
soundtrack worker (it dead-letters records written straight to the topic that break them)."""

HEART_RATE_BPM = (25, 250)  # below 25 or above 250 is a sensor fault, not a person
CADENCE_SPM = (0, 260)      # elite sprint cadence tops out near 250
