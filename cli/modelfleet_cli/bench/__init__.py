"""`modelfleet bench`: a load generator for OpenAI-compatible endpoints."""
