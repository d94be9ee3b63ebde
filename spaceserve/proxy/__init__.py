"""The proxy template: one OpenAI-compatible URL in front of an ordered cascade of upstreams."""
