"""A small, fast run of the load benchmark (bench/bench_load.py) on the real stack: gateway
and controller processes, Redis, Docker, five pooled containers shared by ten users.

Every start that got a container reaches `ready`, the per-user limit holds (client-side,
and in Redis throughout), the 4th preview is refused with 429, refusals for lack of
capacity are the only errors, and everything is given back at the end.
"""

from __future__ import annotations

from bench.bench_load import LIMIT, Options, report, run_load


def test_ten_users_share_five_containers_within_the_limits(test_image: str) -> None:
    options = Options(
        users=10,
        seconds=10,
        # One greedy user holds 3 containers for a while: leave the others room to run.
        containers=5,
        template="node-basic",
        hold=1.5,
        think=1.0,
        greedy_every=10,
        sample=1.0,
        image=test_image,
    )
    results, logs = run_load(options)
    report(options, results, logs)  # shown when the test fails

    starts = results.starts
    assert starts["ready"] >= 2, starts
    assert starts["failed"] == 0, results.errors
    assert results.limit_checks >= 1
    assert starts["refused at limit (429)"] == results.limit_checks
    assert not results.limit_violations
    assert results.client_max_live == LIMIT  # the greedy user really held every slot
    assert results.redis_samples >= 5
    assert results.redis_max_slots == LIMIT  # seen in Redis too, and never more
    assert results.redis_max_sessions <= LIMIT
    assert len(results.proxied) > 0
    # Waiting for capacity is the only error; nothing is left held or outside the pool.
    assert set(results.errors) <= {"503 no_capacity"}, results.errors
    assert len(results.rss) >= 3
