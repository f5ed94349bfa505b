"""The Redis backend on a local three-node Redis Cluster: the conformance suite's core cases,
plus topics spread over every node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import echo_lab as el
from tests.conformance import test_groups_reliability as groups
from tests.conformance import test_publish_consume as basics
from tests.fixtures.redis import RedisCluster
from tests.helpers import wait_until


@pytest.fixture
def backend_url(redis_cluster_url: str) -> str:
    """Every conformance fixture (``stream``, ``connect``) of this module uses the cluster."""
    return redis_cluster_url


# The conformance suite's core cases, collected here once more against the cluster.
test_publish_and_take = basics.test_publish_returns_increasing_ids_and_take_reads_them_in_order
test_publish_many = basics.test_publish_many_returns_one_id_per_row_in_order
test_start_positions = basics.test_start_positions
test_fan_out = basics.test_fan_out_every_subscriber_gets_every_message
test_fan_in = basics.test_fan_in_many_producers_one_consumer
test_retention = basics.test_retention_keeps_the_newest_maxlen
test_info_added = basics.test_info_added_counts_every_entry_ever_appended
test_infos = basics.test_infos_of_several_topics_in_order
test_async_api = basics.test_async_api_from_another_event_loop
test_group_split = groups.test_group_members_split_the_messages
test_two_groups = groups.test_two_groups_each_get_every_message
test_stuck_member_claimed = groups.test_a_stuck_members_messages_are_claimed_by_another
test_dead_letters = groups.test_handler_failure_is_retried_then_dead_lettered_and_consumer_goes_on
test_undecodable = groups.test_undecodable_entry_is_skipped_counted_and_dead_lettered
test_crystal_echo = groups.test_crystal_echo_format_both_ways
test_introspection = groups.test_introspection
test_range_reverse = groups.test_range_reverse_gives_the_newest_first
test_ack_and_claim = groups.test_ack_and_claim_by_hand
test_delete_recovers = groups.test_deleting_a_topic_under_a_group_consumer_recovers


def test_topics_spread_over_every_node_and_are_all_listed(
    redis_cluster: RedisCluster, redis_cluster_url: str
):
    names = [f"topic-{i}" for i in range(30)]
    with el.connect(redis_cluster_url) as stream:
        assert stream.backend.cluster
        for name in names:
            stream.publish(name, {"name": name})
        assert stream.topics() == sorted(names)
        infos = stream.runtime.run(stream.backend.infos(names))  # one pipeline per node
        assert [(i["topic"], i["length"], i["added"]) for i in infos] == [(n, 1, 1) for n in names]
        for name in names:
            (env,) = stream.take(name, 1, timeout=5, start="0")
            assert env.data == {"name": name}
        prefix = stream.backend.prefix
    holders = []
    for server in redis_cluster.servers:
        raw = server.client()
        holders.append(len(list(raw.scan_iter(match=f"{prefix}*", _type="stream"))))
        raw.close()
    assert sum(holders) == 30 and all(holders)  # every node holds some of them


def test_a_plain_url_of_a_cluster_node_is_detected(redis_cluster: RedisCluster):
    port = redis_cluster.servers[1].port
    with el.connect(f"redis://127.0.0.1:{port}/0", prefix="detect:") as stream:
        assert stream.backend.cluster
        ids = stream.publish_many("a", [{"n": i} for i in range(10)])
        assert [e.id for e in stream.take("a", 10, timeout=5, start="0")] == ids
        stream.delete("a")


def test_a_stale_slot_map_is_corrected_on_moved(redis_cluster_url: str):
    with el.connect(redis_cluster_url) as stream:
        backend = stream.backend
        first = backend._slot_nodes[0][1]
        refreshed: dict[str, list[bool]] = {"sync": [], "async": [], "read": []}

        def stale_then(kind: str, action: Callable[[], Any]) -> Any:
            backend._slot_nodes = [(end, first) for end, _ in backend._slot_nodes]
            result = action()
            refreshed[kind].append(len(set(backend._primaries())) == 3)
            return result

        for i in range(12):
            name = f"moved-{i}"
            stale_then("sync", lambda name=name: stream.publish(name, {"n": 1}))
            stale_then(
                "async", lambda name=name: stream.runtime.run(stream.apublish(name, {"n": 2}))
            )
            got = stale_then(
                "read", lambda name=name: stream.take(name, 2, timeout=5, start="0", group="g")
            )
            assert [e.data["n"] for e in got] == [1, 2]
        # keys on the other nodes got MOVED, and the map was read again each time
        assert all(any(flags) for flags in refreshed.values())


def test_running_consumers_follow_moved(redis_cluster_url: str):
    with el.connect(redis_cluster_url) as stream:
        backend = stream.backend
        names = [f"follow-{i}" for i in range(6)]
        fan: list[tuple[str, int]] = []
        grp: list[tuple[str, int]] = []
        subs = [stream.on(name, lambda e: fan.append((e.topic, e.data["n"]))) for name in names]
        subs += [
            stream.on(name, lambda e: grp.append((e.topic, e.data["n"])), group="g")
            for name in names
        ]
        first = backend._slot_nodes[0][1]
        for cursor in list(backend._cursors):  # every cursor now talks to the wrong node
            cursor._link = type(cursor._link)(backend, first)
        for name in names:
            stream.publish(name, {"n": 1})
        want = sorted((name, 1) for name in names)
        assert wait_until(lambda: sorted(fan) == want and sorted(grp) == want, timeout=10)
        assert all(sub.running and sub.stats.read_errors == 0 for sub in subs)
        for sub in subs:
            sub.stop()
