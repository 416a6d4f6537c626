"""The modelfleet serving data plane: an OpenAI-compatible Ray Serve app over vLLM or Triton."""
