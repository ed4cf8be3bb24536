"""Enforcement in front of the model: the OpenAI-compatible proxy, policy and shared state."""
