"""NodeMetrics on a real node, without sockets: scrape-time sampling and bounded labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from npc_server.config import Config, ConfigError, load_config
from npc_server.events import Closed, Limited
from npc_server.metrics import NodeMetrics, close_label
from npc_server.node import Node
from npc_server.npcs import AnsweredBy, ToolSpec
from npc_server.protocol.frames import Ack, Delta
from npc_server.tools import ToolQuestion

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: NodeMetrics) -> Samples:
    body, _ = metrics.exposition()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def node_and_metrics() -> tuple[Node, NodeMetrics]:
    node = Node(Config(), {})
    metrics = NodeMetrics(node)
    node.events.subscribe(metrics)
    return node, metrics


def test_queue_counters_are_read_at_scrape_time_and_survive_session_end() -> None:
    """Merges and drops come from the sessions' queues, and stay counted once a session ends."""
    node, metrics = node_and_metrics()
    session = node.open_session("alice")
    session.push_nowait(Delta("t-1", "Hel", 0))
    session.push_nowait(Delta("t-1", "lo", 3))  # merged into the first
    session.push_nowait(Ack(1))
    samples = scrape(metrics)
    assert value(samples, "npc_server_outbound_pushed_total") == 3
    assert value(samples, "npc_server_outbound_merged_total") == 1
    assert value(samples, "npc_server_outbound_queue_frames") == 2
    assert value(samples, "npc_server_outbound_queue_frames_max") == 2
    assert value(samples, "npc_server_sessions", state="detached") == 1
    node.end_session(session)  # its two queued frames are dropped with it
    samples = scrape(metrics)
    assert value(samples, "npc_server_outbound_pushed_total") == 3
    assert value(samples, "npc_server_outbound_merged_total") == 1
    assert value(samples, "npc_server_outbound_dropped_total") == 2
    assert value(samples, "npc_server_outbound_queue_frames") == 0
    assert value(samples, "npc_server_sessions", state="detached") == 0


async def test_tool_failures_are_read_at_scrape_time_by_reason() -> None:
    """The router's failures by reason become counter steps, counted once however often
    the scrape comes: a game tool without a game URL, a client tool nobody answers."""
    node, metrics = node_and_metrics()
    question = ToolQuestion("c-1", "weather", {}, "t-1", "scout", "alice", None)
    assert await node.tools.ask(ToolSpec("weather"), question) == ("error", None)
    samples = scrape(metrics)
    assert value(samples, "npc_server_tool_failures_total", reason="no_game_url") == 1
    assert value(samples, "npc_server_tool_failures_total", reason="timeout") == 0
    glance = ToolSpec("glance", answered_by=AnsweredBy.CLIENT, timeout_s=0.01)
    assert await node.tools.ask(glance, question) == ("timeout", None)
    samples = scrape(metrics)
    assert value(samples, "npc_server_tool_failures_total", reason="no_game_url") == 1
    assert value(samples, "npc_server_tool_failures_total", reason="timeout") == 1


def test_each_app_has_its_own_registry() -> None:
    """Two nodes in one process (tests, embedding) count separately."""
    first, first_metrics = node_and_metrics()
    _, second_metrics = node_and_metrics()
    first.events.emit(Limited("frames", "alice"))
    assert value(scrape(first_metrics), "npc_server_limited_total", what="frames") == 1
    assert value(scrape(second_metrics), "npc_server_limited_total", what="frames") == 0


def closed(code: int | None, peer_code: int | None) -> Closed:
    return Closed("websocket", "127.0.0.1", "alice", "s-1", code, peer_code, "")


@pytest.mark.parametrize(
    ("code", "peer_code", "label"),
    [
        (4000, None, ("server", "4000")),
        (None, 1000, ("peer", "1000")),
        (None, 4321, ("peer", "other")),  # a client picks any code: not a label value
        (None, None, ("peer", "none")),
    ],
)
def test_close_labels_are_bounded(
    code: int | None, peer_code: int | None, label: tuple[str, str]
) -> None:
    """Our codes and the standard peer codes are labels; any other peer code is `other`."""
    assert close_label(closed(code, peer_code)) == label


def test_no_label_holds_a_player_session_or_turn_id() -> None:
    """Player and session ids never become label values (unbounded series)."""
    node, metrics = node_and_metrics()
    node.events.emit(closed(None, 1000))
    node.events.emit(Limited("turns", "alice"))
    node.open_session("alice")
    labels = {v for _, pairs in scrape(metrics) for _, v in pairs}
    assert not any("alice" in v or v.startswith(("s-", "t-")) for v in labels)


def test_every_metric_is_documented() -> None:
    """docs/operations.md has a table row for each metric the node exports."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    _, metrics = node_and_metrics()
    names = {m.name for m in metrics.registry.collect() if m.name.startswith("npc_server_")}
    assert len(names) > 30
    for name in names:
        kind = next(m.type for m in metrics.registry.collect() if m.name == name)
        suffix = "_total" if kind == "counter" else ""
        assert f"| `{name}{suffix}` |" in doc, name


@pytest.mark.parametrize("bind", ["9100", "host:", ":9100", "host:port", "host:70000"])
def test_a_bad_metrics_bind_is_refused(bind: str) -> None:
    """[metrics] bind is "" or host:port, else the start stops naming the key."""
    with pytest.raises(ConfigError, match=r"\[metrics\] bind\) must be"):
        load_config(env={"NPC_SERVER_METRICS_BIND": bind})
