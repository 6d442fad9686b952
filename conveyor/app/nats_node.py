"""The nats-server `conveyor up --parts nats` runs: a single server, or a cluster node."""

from __future__ import annotations

from bus.server import ClusterSpec, EmbeddedNats
from conveyor.config import Config
from conveyor.config_nats import server_name
from conveyor.layout import Layout


def embedded_server(cfg: Config) -> EmbeddedNats:
    """The server `[nats]` describes; with `[nats.cluster]` named, this host's node of it."""
    cluster = cfg.nats.cluster
    if not cluster.name:
        return EmbeddedNats(
            Layout(cfg.data_path).nats_store,
            host=cfg.nats.host,
            port=cfg.nats.port,
            monitor_port=cfg.nats.monitor_port,
        )
    return EmbeddedNats(
        Layout(cfg.data_path).nats_store,
        host=cfg.nats.host,
        port=cfg.nats.port,
        monitor_port=cfg.nats.monitor_port,
        # Each node needs its own name: JetStream's RAFT groups tell the peers apart by it.
        server_name=server_name(cluster),
        # A node is ready once a quorum elected a meta leader: the others may start later.
        ready_timeout_s=cluster.ready_timeout_s,
        cluster=ClusterSpec(cluster.name, cluster.listen, tuple(cluster.routes)),
    )
