"""Events between services: transactional outbox, HMAC-signed HTTP relay, idempotent inbox.

- :mod:`shared.events.contracts`: one model per event type and version; publishers pass the
  model, receivers get it validated (:class:`EventHandlers`).
- :class:`EventPublisher` writes events into the caller's transaction (no commit, no I/O).
- :class:`OutboxRelay` claims due rows with ``FOR UPDATE SKIP LOCKED``, POSTs them signed to
  each subscriber (in batches to ``/internal/events/batch``, one alone to
  ``/internal/events``), settles each row by its event's result and reschedules failures
  with exponential backoff, marking a row ``dead`` after the configured number of attempts.
- :func:`inbox_router` verifies the signature and applies each event id once, one event or
  a batch (handlers may take a batch at once: ``EventHandlers.on_batch``).
"""

from shared.events._envelope import Envelope
from shared.events._inbox import inbox_router
from shared.events._outbox import EventPublisher
from shared.events._relay import OutboxRelay, redrive_dead
from shared.events._signing import SIGNATURE_HEADER, sign, verify
from shared.events.contracts import EventHandlers, EventPayload

__all__ = [
    "SIGNATURE_HEADER",
    "Envelope",
    "EventHandlers",
    "EventPayload",
    "EventPublisher",
    "OutboxRelay",
    "inbox_router",
    "redrive_dead",
    "sign",
    "verify",
]
