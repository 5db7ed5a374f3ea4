"""How big each measurement is: the full run, `--quick` (under 60 s) and `--tiny` (tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    # The benchmark NPC's pacing (server-wide [overrides.scripted], jitter 0).
    tokens_per_second: float = 20.0
    first_token_ms: int = 50
    # 1. ping RTT and the bare servers' push rate
    rtt_samples: int = 5000
    rtt_warmup: int = 500
    # npc-server and bare Quart ping in alternating rounds, rtt_samples over all of them
    rtt_rounds: int = 5
    push_frames: int = 100_000
    push_size: int = 40
    # 2. say -> ack / first delta
    say_samples: int = 200
    # 3. interrupt -> turn.end at 1 and N streaming players
    interrupt_levels: tuple[int, ...] = (1, 500)
    interrupt_cycles_one: int = 50
    interrupt_cycles_each: int = 6
    interrupt_grace_s: float = 0.15
    # 4 + 7. delivery lag, tokens/s and CPU per token as players grow
    lag_levels: tuple[int, ...] = (100, 500, 1000, 2000)
    lag_refine: int = 3  # extra steps bisecting the knee (1,000-2,000 down to an eighth)
    # When the largest level is still within the knee, step up by a quarter at a
    # time, at most this many steps: on a fast machine 2,000 players is not the knee,
    # and a knee ratio read there would be only a lower bound.
    lag_extend: int = 4
    lag_duration_s: float = 10.0
    lag_ramp_s: float = 2.0
    lag_knee_ms: float = 100.0
    # The machine is shared: wait up to this long before each measurement for
    # other processes to go quiet, and measure a streaming step again when
    # they used the CPU meanwhile. Quick and tiny runs do neither (time budget).
    quiet_wait_s: float = 20.0
    retry_contaminated: bool = True
    # 5. idle connections
    memory_levels: tuple[int, ...] = (1000, 5000, 10_000)
    memory_concurrency: int = 200
    memory_settle_s: float = 1.0
    # 6. slow consumers
    slow_players: int = 200
    slow_fraction: float = 0.1
    slow_duration_s: float = 15.0
    slow_repeats: int = 3
    slow_rcvbuf: int = 4096
    release_players: int = 50
    release_tokens_per_second: float = 1000.0
    release_env: tuple[tuple[str, str], ...] = ()
    # 8. relay: (tokens/s, delta_ms) of npc-server's series; the tutorial runs at each rate
    relay_configs: tuple[tuple[float, int], ...] = ((20.0, 0), (20.0, 50), (60.0, 0), (60.0, 50))
    relay_levels: tuple[int, ...] = (50, 200, 500, 1000, 1500)
    relay_refine: int = 2
    relay_duration_s: float = 6.0
    # 9. cluster: CPU per token on two nodes and Redis vs one process (private
    # streams and rooms of two across nodes), the --workers 2 knee, Redis per
    # idle session. Steps up the knee levels until p99 passes, then bisect.
    cluster_players: int = 200
    cluster_setups: tuple[str, ...] = ("single", "one_node", "two_nodes")
    cluster_repeats: int = 2
    cluster_duration_s: float = 10.0
    cluster_knee_levels: tuple[int, ...] = (100, 200, 300, 400, 600, 800, 1000, 1200)
    cluster_refine: int = 2
    cluster_extend: int = 5  # steps of a quarter more past the last level while within
    cluster_idle_sessions: int = 2000
    cluster_idle_window_s: float = 20.0

    @property
    def lag_warmup_s(self) -> float:
        return self.lag_ramp_s + self.first_token_ms / 1000 + 0.5

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(name="full")

QUICK = Plan(
    name="quick",
    relay_configs=((20.0, 0), (60.0, 50)),
    relay_levels=(50,),
    relay_refine=0,
    relay_duration_s=2.5,
    cluster_players=100,
    cluster_repeats=1,
    cluster_duration_s=2.5,
    cluster_knee_levels=(100, 300),
    cluster_refine=0,
    cluster_extend=0,
    cluster_idle_sessions=200,
    cluster_idle_window_s=2.0,
    quiet_wait_s=0.0,
    retry_contaminated=False,
    rtt_samples=1000,
    rtt_warmup=100,
    rtt_rounds=2,
    push_frames=20_000,
    say_samples=30,
    interrupt_levels=(1, 50),
    interrupt_cycles_one=10,
    interrupt_cycles_each=3,
    interrupt_grace_s=0.1,
    lag_levels=(50, 200),
    lag_refine=0,
    lag_extend=0,
    lag_duration_s=2.5,
    lag_ramp_s=0.5,
    memory_levels=(200, 1000),
    memory_settle_s=0.5,
    slow_players=50,
    slow_duration_s=2.5,
    slow_repeats=1,
    release_players=10,
    # Shorter than the defaults (write 10 s, kernel 15 s) so the release fits the quick run.
    release_env=(
        ("NPC_SERVER_LIMITS_WRITE_TIMEOUT", "1"),
        ("NPC_SERVER_SERVER_TCP_USER_TIMEOUT_MS", "2000"),
    ),
)

TINY = replace(
    QUICK,
    name="tiny",
    relay_configs=((60.0, 50),),
    relay_levels=(5,),
    relay_duration_s=1.0,
    cluster_players=10,
    cluster_setups=("single", "two_nodes"),
    cluster_duration_s=1.0,
    cluster_knee_levels=(10,),
    cluster_idle_sessions=20,
    cluster_idle_window_s=0.5,
    rtt_samples=100,
    rtt_warmup=20,
    rtt_rounds=2,
    push_frames=2000,
    say_samples=5,
    interrupt_levels=(1, 4),
    interrupt_cycles_one=3,
    interrupt_cycles_each=2,
    interrupt_grace_s=0.1,
    lag_levels=(5, 10),
    lag_duration_s=1.0,
    lag_ramp_s=0.2,
    memory_levels=(20, 50),
    memory_settle_s=0.2,
    slow_players=10,
    slow_duration_s=1.0,
    release_players=2,
    release_env=(
        ("NPC_SERVER_LIMITS_WRITE_TIMEOUT", "1"),
        ("NPC_SERVER_SERVER_TCP_USER_TIMEOUT_MS", "1500"),
    ),
)

PLANS = {plan.name: plan for plan in (FULL, QUICK, TINY)}
