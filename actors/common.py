"""Where the Launcher finds `subject_for` until it publishes with `Bus.emit`."""

from bus.subjects import subject_for as subject_for
