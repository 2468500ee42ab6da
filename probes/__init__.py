"""Observe regional LLM endpoints: liveness, streamed inference and server metrics."""
