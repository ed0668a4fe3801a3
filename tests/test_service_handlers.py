"""The address space is served once: every endpoint of the protocol table has exactly one handler."""

from __future__ import annotations

from bridge.osc import TRANSPORT_ENDPOINTS
from bridge.protocol import ENDPOINTS
from bridge.service import Service


def test_every_address_in_the_table_has_a_handler() -> None:
    service = Service(engine=None, writer=None)  # type: ignore[arg-type]
    served = set(service.handlers)
    names = {e.name for e in ENDPOINTS}
    assert served | set(TRANSPORT_ENDPOINTS) == names, "an endpoint without a handler, or a handler for none"
    assert not served & set(TRANSPORT_ENDPOINTS), "an endpoint served twice"
    for name, handler in service.handlers.items():
        assert callable(handler), name
