"""The per-client WebSocket byte budget's arithmetic (the relays use it in test_slow_clients)."""

from __future__ import annotations

from gateway.ws_budget import Budgets, frame_size


def test_accounts_share_their_clients_budget_and_give_back_what_they_took() -> None:
    budgets = Budgets(limit=100)
    first, second = budgets.account("10.0.0.1"), budgets.account("10.0.0.1")
    other = budgets.account("10.0.0.2")
    assert first.take(60)
    assert not second.take(50)  # 110 > 100 for this address
    assert other.take(100)  # another address has its own
    second.give(1000)  # an estimate too large gives back only what it took
    assert budgets.held == {"10.0.0.1": 60, "10.0.0.2": 100}
    first.close()
    other.close()
    assert budgets.held == {} and budgets.total() == 0


def test_frame_size_counts_the_header_of_an_unmasked_frame() -> None:
    assert [frame_size(n) for n in (0, 125, 126, 65535, 65536)] == [2, 127, 130, 65539, 65546]
