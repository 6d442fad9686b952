"""Config of NATS clustering (`[nats]` servers and replicas, `[nats.cluster]`).

Kept apart to keep `conveyor.config` small: `NatsConfig` there extends `NatsScaleOut`,
so these keys sit in `[nats]` itself. Like every section, unknown keys are errors.
"""

from __future__ import annotations

import socket

import msgspec

from conveyor.errors import ConfigError

MAX_REPLICAS = 5
"""JetStream's own limit on the replicas of a stream."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of config sections: unknown keys are errors (as in `conveyor.config`)."""


class NatsClusterConfig(_Section, frozen=True):
    """This host's node of a NATS cluster, started by `conveyor up --parts nats`."""

    name: str = ""
    """Cluster name, the same on every node; empty: a single server, no cluster."""
    node_name: str = ""
    """This node's `server_name`, unique in the cluster; empty: the host name."""
    listen: str = "0.0.0.0:6222"
    """host:port the node takes routes from the other nodes on."""
    routes: list[str] = msgspec.field(default_factory=list)
    """The other nodes' route URLs, e.g. `nats://10.0.0.2:6222`."""
    ready_timeout_s: float = 120.0
    """How long a starting node waits for a quorum of the cluster to answer healthy."""


class NatsScaleOut(_Section, frozen=True):
    """The `[nats]` keys that let Conveyor leave one host."""

    servers: list[str] = msgspec.field(default_factory=list)
    """Every node's client URL; non-empty: replaces `url` (joined with commas)."""
    replicas: int = 1
    """Replicas of every stream and KV bucket: 1 on one server, 3 on a 3-node cluster."""
    write_retry_s: float = 20.0
    """How long a JetStream write without an answer is tried again, the same write."""
    cluster: NatsClusterConfig = msgspec.field(default_factory=NatsClusterConfig)

    def __post_init__(self) -> None:
        if self.servers:
            msgspec.structs.force_setattr(self, "url", ",".join(self.servers))


def server_name(cluster: NatsClusterConfig) -> str:
    """The node's `server_name`: configured, or this host's name."""
    return cluster.node_name or socket.gethostname()


def check_nats(nats: NatsScaleOut, url: str) -> None:
    """Cross-field rules of `[nats]`; raise ConfigError naming the key."""
    if not 1 <= nats.replicas <= MAX_REPLICAS or nats.replicas % 2 == 0:
        raise ConfigError(f"nats.replicas: must be odd, 1 to {MAX_REPLICAS} (quorum)")
    if not nats.write_retry_s > 0:
        raise ConfigError("nats.write_retry_s: must be > 0")
    if not nats.cluster.ready_timeout_s > 0:
        raise ConfigError("nats.cluster.ready_timeout_s: must be > 0")
    if nats.cluster.name and not nats.cluster.routes:
        raise ConfigError("nats.cluster.routes: a cluster node needs the other nodes' routes")
    nodes = len([u for u in url.split(",") if u.strip()])
    if nats.cluster.name:
        nodes = max(nodes, len(nats.cluster.routes) + 1)
    if nats.replicas > max(nodes, 1):
        raise ConfigError(
            f"nats.replicas: {nats.replicas} replicas need as many nodes; "
            f"{max(nodes, 1)} listed in nats.servers (or nats.cluster.routes)"
        )
