"""The bus: messages, subjects, NATS connection, embedded server, stores."""
