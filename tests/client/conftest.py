"""The client's tests run against the same real stacks as the API's: a gateway on the test
Redis and Docker (tests/gateway/conftest.py), and the browser stack (tests/e2e/conftest.py)."""

from tests.e2e.conftest import browser, stack
from tests.gateway.conftest import gateway, start_gateway, sync_redis

__all__ = ["browser", "gateway", "stack", "start_gateway", "sync_redis"]
