"""The completion dispatcher: it wakes each completed execution's caller.

- :mod:`~projections.dispatch.dispatcher`: the loop (:class:`Dispatcher`), and
  how the CLI starts it;
- :mod:`~projections.dispatch.outcome_book`: what is in flight, what waits to be
  recorded, and how far the position may go (pure);
- :mod:`~projections.dispatch.preparation`: pages of completions into jobs,
  attempts recorded before any call;
- :mod:`~projections.dispatch.reading`: a page's executions with one query, and
  those that cannot be read (parked as poisoned);
- :mod:`~projections.dispatch.in_flight`: the concurrent Temporal calls;
- :mod:`~projections.dispatch.calls`: one execution's call, with its retries;
- :mod:`~projections.dispatch.flushing`: outcomes and position into the log;
- :mod:`~projections.dispatch.leadership`: one active dispatcher per store;
- :mod:`~projections.dispatch.outage`: steps that wait out a store outage;
- :mod:`~projections.dispatch.delivery` and :mod:`~projections.dispatch.log`:
  the delivery aggregate and the dispatcher's log (what the views read).
"""
