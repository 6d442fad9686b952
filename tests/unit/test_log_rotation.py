"""A rotated agent log: generations shift, and a live reader goes on from the new start."""

from __future__ import annotations

from pathlib import Path

from actors.janitor_files import rotate
from actors.jobs.watch import _Reader
from gateways.agents.base import Stream


class Lines:
    """Collects what the reader feeds (the part of an OutputParser the reader uses)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def feed(self, line: str, stream: Stream) -> None:
        self.lines.append(line)


def test_rotation_keeps_n_generations_and_truncates_in_place(tmp_path: Path):
    log = tmp_path / "output.log"
    for text in ("one", "two", "three"):
        log.write_text(text)
        rotate(log, 2)
        assert log.read_bytes() == b""
    assert Path(f"{log}.1").read_text() == "three"
    assert Path(f"{log}.2").read_text() == "two"
    assert not Path(f"{log}.3").exists()

    log.write_text("four")
    rotate(log, 0)
    assert log.read_bytes() == b""
    assert Path(f"{log}.1").read_text() == "three"


def test_a_live_reader_follows_its_log_across_a_rotation(tmp_path: Path):
    log = tmp_path / "output.log"
    log.touch()
    parser = Lines()
    reader = _Reader(log, parser, start=0)  # type: ignore[arg-type]
    with log.open("ab") as agent:
        agent.write(b"before\n")
        agent.flush()
        assert reader.pump()
        rotate(log, 1)
        agent.write(b"after\n")
        agent.flush()
        assert reader.pump()
    reader.pump(final=True)

    assert parser.lines == ["before", "after"]
