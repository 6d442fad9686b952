"""Fake model APIs for the agent CLIs: Anthropic, OpenAI Responses, Chat Completions, Gemini."""

from tests.fakes.models.script import (
    BAD_REQUEST,
    FORBIDDEN,
    HANG,
    OVERLOADED,
    RATE_LIMITED,
    SERVER_ERROR,
    STALL,
    UNAUTHORIZED,
    Fault,
    LoggedRequest,
    Script,
    WriteFile,
)
from tests.fakes.models.server import FakeModel

__all__ = [
    "BAD_REQUEST",
    "FORBIDDEN",
    "HANG",
    "OVERLOADED",
    "RATE_LIMITED",
    "SERVER_ERROR",
    "STALL",
    "UNAUTHORIZED",
    "FakeModel",
    "Fault",
    "LoggedRequest",
    "Script",
    "WriteFile",
]
