"""Where actors found message routing before `Bus.emit`; the table is in `bus.subjects`."""

from bus.subjects import is_durable as is_durable
from bus.subjects import subject_for as subject_for
