"""The multi-host proof: every fault of a small fleet, items delivered, each effect once.

Hosts are network namespaces on one bridge: three NATS nodes (every stream R3),
a forge host serving the bare repositories over git smart HTTP, two control hosts
with the leader lease, and two launcher hosts with their own `launcher.host_id`.
No process shares a directory with another: everything else reaches the forge
only by its URL. Items of two repositories flow with the demo agent while the
node leading the streams and the active control are killed -9, a launcher is
frozen past its host's silence, another is cut off, and the active control is
cut off; each comes back. Every item must reach `done` with its pull request
opened and merged, and its production deploy run, exactly once:
counted at the forge, in the deploy log and in the effect ledger.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.queue_policy import Job
from bus import subjects
from bus.bridge import Bus
from bus.effects import Effect
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from tests.cluster.cluster import NatsCluster
from tests.cluster.netns import Host
from tests.cluster.sites import EXTRA_REPOS, Site, Sites
from tests.harness import ALL_STAGES, drive, stored_jobs, wait_until
from tests.standby_support import TTL_S, EpochWatch, Stamped, active_of, standby_toml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

CLOCK = SystemClock()
SILENCE_S = 5.0
ENV = {
    "CONVEYOR_REAPER__INTERVAL_S": "0.2",
    "CONVEYOR_REAPER__DEAD_TICKS": "2",
    "CONVEYOR_REAPER__HEARTBEAT_TIMEOUT_S": "1.0",
    "CONVEYOR_LAUNCHER__HOST_SILENCE_S": str(SILENCE_S),
    # A job may lose an attempt to each of the two launcher faults and still be run.
    "CONVEYOR_QUEUE__MAX_ATTEMPTS": "4",
}
CONTROLS = ("c1", "c2")
REPOS = ("demo", *EXTRA_REPOS)


@pytest.fixture
def bus(nats_cluster: NatsCluster) -> Iterator[Bus]:
    connected = Bus.connect(nats_cluster.url, name="test-multihost", replicas=3)
    yield connected
    connected.close()


def _host_id(name: str) -> str:
    return f"host-{name}"


def _submit(client: Client) -> list[str]:
    items = []
    for repo in REPOS:
        reply = client.command(
            "submit", {"repo": repo, "title": "Fleet", "description": "demo: developer=slow:3"}
        )
        assert reply["ok"], reply
        items.append(str(reply["task"]["id"]))
    return items


def _running(client: Client, hosts: tuple[str, ...]) -> Job | None:
    """A job whose agent runs now on one of `hosts`."""
    for job in stored_jobs(client):
        if job.status == "running" and job.pid and job.host in hosts:
            return job
    return None


def _moved_on(client: Client, job: Job) -> bool:
    """`job`'s attempt was taken from its silent host (only the Reaper writes it now)."""
    for now in stored_jobs(client):
        if now.id == job.id:
            return now.attempts > job.attempts or now.status != "running"
    return False


def _kill(site: Site) -> None:
    os.kill(site.proc.pid, signal.SIGKILL)
    site.proc.wait(timeout=10)


def _new_active(watch: EpochWatch, sites: Sites, standby: str, old_epoch: int) -> int:
    name, epoch = active_of(watch, sites, (standby,))  # type: ignore[arg-type]
    assert (name, epoch > old_epoch) == (standby, True)
    return epoch


def _first_write(watch: EpochWatch, epoch: int, since: float) -> Stamped:
    """The first write of the new active: of `epoch`, or of a later one of its own.

    A standby that wins while the cluster elects the lease stream's leader can lose
    the lease to an ambiguous renewal at once and win it again under the next epoch.
    """
    found: Stamped = wait_until(
        lambda: next((s for s in watch.stamped(since=since) if s.epoch >= epoch), None),
        what=f"a write of epoch {epoch} or later",
        deadline_s=30,
    )
    return found


def _take_from_its_host(client: Client, launchers: tuple[str, ...]) -> Job:
    """Wait until an agent runs on one of `launchers`; that job."""
    job: Job = wait_until(
        lambda: _running(client, tuple(_host_id(n) for n in launchers)),
        what=f"an agent running on {launchers}",
        deadline_s=60,
    )
    return job


def _stood_down(site: Site, epoch: int) -> bool:
    """`site` logged that it stopped its control actors of `epoch`."""
    lines = site.log.read_text(errors="replace").splitlines()
    return any('"control.stopped"' in line and f'"epoch": {epoch},' in line for line in lines)


def _ledger_counts(client: Client, item: str) -> tuple[int, int]:
    """Pull requests opened and merges done for `item`, as the effect ledger records them."""
    entries = client.bus.store(subjects.BUCKET_EFFECTS, Effect).load_all()
    done = [k for k, e in entries.items() if e.value.status == "done"]
    return (
        sum(k.startswith(f"{item}.pull.") for k in done),
        sum(k.startswith(f"{item}.merge.") for k in done),
    )


def test_items_cross_a_fleet_of_hosts_through_every_fault_with_each_effect_once(
    nats_cluster: NatsCluster, hosts: Callable[[int], list[Host]], bus: Bus, tmp_path: Path
) -> None:
    # Given a forge host, two controls with the leader lease and two launchers, all apart
    forge_host, c1_host, c2_host, la_host, lb_host = hosts(5)
    sites = Sites(nats_cluster, tmp_path / "sites", standby_toml(TTL_S, side=False), ENV)
    watch: EpochWatch | None = None
    client = Client(nats_cluster.url, timeout_s=3.0)
    try:
        forge = sites.start_forge("forge", forge_host)
        wait_until(
            lambda: "conveyor.started" in forge.log.read_text(errors="replace"),
            what="the forge serving",
            deadline_s=60,
        )
        for name, host in (("c1", c1_host), ("c2", c2_host)):
            sites.start(name, "control", host, _host_id(name))
        for name, host in (("la", la_host), ("lb", lb_host)):
            sites.start(name, "launcher", host, _host_id(name))
        watch = EpochWatch(nats_cluster.url)
        active, epoch = active_of(watch, sites, CONTROLS)  # type: ignore[arg-type]
        items = _submit(client)
        for item in items:
            drive(client, item, *ALL_STAGES[ALL_STAGES.index("development") :], deadline_s=60)
        _take_from_its_host(client, ("la", "lb"))

        # When the node leading the streams and the active control are killed -9 at once
        victim = nats_cluster.busiest_leader(bus)
        nats_cluster.kill(victim)
        killed_at = CLOCK.monotonic()
        _kill(sites.sites[active])
        standby = "c2" if active == "c1" else "c1"
        # Then the standby takes over mid-pipeline (and the killed one comes back as standby)
        epoch = _new_active(watch, sites, standby, epoch)
        _first_write(watch, epoch, killed_at)
        sites.restart(active, "control", _host_id(active))
        active = standby

        # When a launcher is frozen past its host's silence, then thawed
        frozen = _take_from_its_host(client, ("la", "lb"))
        name = "la" if frozen.host == _host_id("la") else "lb"
        os.kill(sites.sites[name].proc.pid, signal.SIGSTOP)
        try:
            # Then its job is taken from it
            wait_until(lambda: _moved_on(client, frozen), what="frozen job moved", deadline_s=40)
        finally:
            os.kill(sites.sites[name].proc.pid, signal.SIGCONT)

        # When the other launcher's link is cut, then restored
        other = "lb" if name == "la" else "la"
        cut = _take_from_its_host(client, (other,))
        sites.sites[other].host.cut()
        try:
            # Then its job is taken from it
            wait_until(lambda: _moved_on(client, cut), what="cut-off job moved", deadline_s=40)
        finally:
            sites.sites[other].host.restore()

        # When the active control's link is cut (its epoch read now: it may have won again)
        deposed, old_epoch = active_of(watch, sites, (active,))  # type: ignore[arg-type]
        standby = "c2" if deposed == "c1" else "c1"
        cut_at = CLOCK.monotonic()
        sites.sites[deposed].host.cut()
        try:
            # Then the standby takes over, and the cut-off control stood down on its own
            epoch = _new_active(watch, sites, standby, old_epoch)
            first = _first_write(watch, epoch, cut_at)
            wait_until(
                lambda: _stood_down(sites.sites[deposed], old_epoch),
                what="the cut-off control stood down",
                deadline_s=30,
            )
        finally:
            sites.sites[deposed].host.restore()
        restored_at = CLOCK.monotonic()

        # And every item reaches done
        for item in items:
            drive(client, item, "done", deadline_s=90)
        # And both launchers, back, gave up the attempts they lost
        for lost in (name, other):
            wait_until(
                lambda lost=lost: "superseded" in sites.sites[lost].log.read_text(errors="replace"),
                what=f"{lost} fenced off its lost attempt",
                deadline_s=30,
            )
        ledger = {item: _ledger_counts(client, item) for item in items}
    except AssertionError as err:
        raise AssertionError(f"{err}\n{sites.logs()}") from None
    finally:
        client.close()
        if watch is not None:
            watch.close()
        sites.stop_all()

    # And the cut-off control wrote nothing once cut off: no message of its epoch
    # arrived after the standby's first write, nor after its link came back
    assert watch is not None
    olds = [s for s in watch.stamped() if s.epoch == old_epoch]
    assert all(s.at < first.at for s in olds), (first, olds[-3:])
    assert not [s for s in olds if s.at >= restored_at]
    # And each effect happened once: at the forge, in the deploy log, in the ledger
    effects = sites.forge_effects()
    assert sum('"pr_opened"' in line for line in effects) == len(items), effects
    assert sum('"pr_merged"' in line for line in effects) == len(items), effects
    assert ledger == {item: (1, 1) for item in items}
    deployed = sites.deployed()
    for item in items:
        assert deployed.count(f"deploy {item}") == 1, deployed
