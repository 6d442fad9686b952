"""End-to-end tests: real nats-server, real git, the demo agent."""
