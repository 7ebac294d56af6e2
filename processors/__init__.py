"""The pure domain: policy packs, tagging, consent, retention, rights, erasure planning, replay.

Every processor is ``(state, event, clock) -> (state, decisions)``: no Kafka, no wall clock.
"""
