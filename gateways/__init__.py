"""The edges: forge, tracker, and later the webhook gateway and API clients."""
