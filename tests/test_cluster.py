"""Redis Cluster: the test cluster itself."""

from __future__ import annotations


def test_the_test_cluster_has_three_primaries_each_with_a_replica(redis_cluster):
    topology = redis_cluster.topology()
    primaries = redis_cluster.primary_ports()
    assert len(primaries) == 3
    replicas = [node for node in topology.values() if not node["primary"]]
    assert sorted(r["of"] for r in replicas) == sorted(topology[p]["id"] for p in primaries)
    for port in redis_cluster.ports:
        assert "cluster_state:ok" in redis_cluster.cli(port, "cluster", "info")
    assert redis_cluster.primary_of_slot(0) in primaries and redis_cluster.primary_of_slot(16383) in primaries
