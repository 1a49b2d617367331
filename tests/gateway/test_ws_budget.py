"""The per-client WebSocket byte budget's arithmetic (the relays use it in test_slow_clients)."""

from __future__ import annotations

from gateway.proxy.ws_budget import Budgets, frame_size


def test_over_the_budget_the_clients_biggest_holder_is_told_to_close() -> None:
    budgets = Budgets(limit=100)
    stuck, lively = budgets.account("10.0.0.1"), budgets.account("10.0.0.1")
    neighbour = budgets.account("10.0.0.2")
    stuck.take(90)
    neighbour.take(100)  # another address has its own budget
    assert not any(a.over.is_set() for a in (stuck, lively, neighbour))
    lively.take(20)  # 110 > 100: the one holding 90 goes, not the one whose take it was
    assert stuck.over.is_set() and not lively.over.is_set()
    lively.take(5)  # still over while the stuck one closes: it is not told twice
    assert not lively.over.is_set()
    stuck.close()
    assert budgets.held == {"10.0.0.1": 25, "10.0.0.2": 100}
    lively.give(1000)  # an estimate too large gives back only what it took
    lively.close()
    neighbour.close()
    assert budgets.held == {} and budgets.accounts == {}


def test_frame_size_counts_the_header_of_an_unmasked_frame() -> None:
    assert [frame_size(n) for n in (0, 125, 126, 65535, 65536)] == [2, 127, 130, 65539, 65546]
