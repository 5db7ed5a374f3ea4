"""`[cluster] memory_ttl` and the store a node makes from its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from npc_server.config import ConfigError, load_config
from npc_server.memories import LocalMemoryStore
from npc_server.memories.redis import RedisMemoryStore
from npc_server.node import Node
from tests.support.server import DEMO_CONFIG


def test_memory_ttl_defaults_to_thirty_days_and_reads_the_environment() -> None:
    """30 days unless NPC_SERVER_CLUSTER_MEMORY_TTL says otherwise."""
    assert load_config(DEMO_CONFIG, env={}).cluster.memory_ttl == 30 * 24 * 3600
    config = load_config(DEMO_CONFIG, env={"NPC_SERVER_CLUSTER_MEMORY_TTL": "90"})
    assert config.cluster.memory_ttl == 90.0


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_memory_ttl_that_is_not_a_positive_number_is_refused(value: str) -> None:
    """The environment variable and the key are named; the server does not start."""
    with pytest.raises(
        ConfigError, match=r"NPC_SERVER_CLUSTER_MEMORY_TTL \(\[cluster\] memory_ttl\)"
    ):
        load_config(DEMO_CONFIG, env={"NPC_SERVER_CLUSTER_MEMORY_TTL": value})


def test_a_bad_memory_ttl_in_the_file_names_the_file_and_key(tmp_path: Path) -> None:
    """`memory_ttl = 0` in server.toml: the error names the file and `[cluster] memory_ttl`."""
    path = tmp_path / "server.toml"
    path.write_text("[cluster]\nmemory_ttl = 0\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=rf"^{path}: \[cluster\] memory_ttl must be greater than 0"
    ):
        load_config(path, env={})


def test_a_node_keeps_memory_in_the_process_without_redis_and_in_redis_with_it() -> None:
    """No redis_url: the local store with memory_ttl; a redis_url: the Redis store."""
    local = Node(load_config(DEMO_CONFIG, env={"NPC_SERVER_CLUSTER_MEMORY_TTL": "60"}), {})
    assert isinstance(local.memories, LocalMemoryStore) and local.memories.ttl == 60
    url = "redis://127.0.0.1:1/0"
    shared = Node(load_config(DEMO_CONFIG, env={"NPC_SERVER_CLUSTER_REDIS_URL": url}), {})
    assert isinstance(shared.memories, RedisMemoryStore) and shared.memories.url == url
