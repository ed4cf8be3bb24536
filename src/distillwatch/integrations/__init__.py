"""Integrations with gateways users already run (LiteLLM)."""
