"""Running it: health probe, metrics, startup, system checks, log masking, memory tuning."""
