"""Cluster mode on one real nats-server: the URL list, leader-routed buckets, the node config."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import api as js_api

from bus import subjects
from bus.bridge import Bus
from bus.server import ClusterSpec, EmbeddedNats, free_port
from conveyor import config as config_mod
from conveyor.app.nats_node import embedded_server

pytestmark = pytest.mark.timeout(60)


def test_a_url_list_whose_first_node_is_dead_connects_to_a_live_one(nats_url: str) -> None:
    dead = f"nats://127.0.0.1:{free_port('127.0.0.1')}"
    bus = Bus.connect(f"{dead}, {nats_url}", connect_timeout_s=2.0)
    try:
        bus.setup()
        assert bus.nc.connected_url is not None
        assert f"{bus.nc.connected_url.hostname}:{bus.nc.connected_url.port}" in nats_url
    finally:
        bus.close()


def test_setup_turns_direct_gets_off_and_never_lowers_replicas(nats_url: str) -> None:
    # Given a bucket an older version created with direct gets (a follower may answer)
    bus = Bus.connect(nats_url)
    try:
        config = js_api.KeyValueConfig(bucket=subjects.BUCKET_TASKS, history=1, direct=True)
        bus.call(bus.js.create_key_value(config))

        # When Conveyor sets up its streams and buckets
        bus.setup()

        # Then every bucket reads through its stream's leader, with the configured replicas
        for bucket in (subjects.BUCKET_TASKS, subjects.BUCKET_JOBS):
            info = bus.call(bus.js.stream_info(f"KV_{bucket}"))
            assert not info.config.allow_direct
            assert info.config.num_replicas == 1
    finally:
        bus.close()


def test_a_cluster_node_config_names_the_node_and_its_routes(tmp_path: Path) -> None:
    cfg = config_mod.load(
        env={},
        overrides={
            "data_dir": str(tmp_path),
            "nats": {
                "cluster": {
                    "name": "prod",
                    "node_name": "b",
                    "listen": "10.0.0.2:6222",
                    "routes": ["nats://10.0.0.1:6222", "nats://10.0.0.3:6222"],
                },
                "replicas": 3,
            },
        },
    )
    server = embedded_server(cfg)
    assert server.server_name == "b"
    assert server.cluster == ClusterSpec(
        "prod", "10.0.0.2:6222", ("nats://10.0.0.1:6222", "nats://10.0.0.3:6222")
    )
    conf = server._render_conf()
    assert 'server_name: "b"' in conf
    assert "sync_interval: always" in conf
    assert 'routes: ["nats://10.0.0.1:6222", "nats://10.0.0.3:6222"]' in conf
    assert 'listen: "10.0.0.2:6222"' in conf.split("cluster {")[1]
    single = EmbeddedNats(tmp_path / "single")
    assert "cluster {" not in single._render_conf()
