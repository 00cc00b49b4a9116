"""``ledger serve``: the platform's execution controllers over gRPC.

The platform's runners call ``AgentExecutionCommandController`` /
``WorkflowExecutionCommandController`` and their query twins; this package serves
them over the ledger, unchanged on the wire (``protos/ledger/grpc``), so a runner
reports to the ledger by pointing at it. Modules:

- :mod:`.runner`: the server (grpcio asyncio), health, reflection, TLS, stop;
- :mod:`.services`: the four controllers;
- :mod:`.core`: the ledger off the event loop, error mapping, request metadata;
- :mod:`.auth`: bearer tokens from a file of hashes, reader and writer roles;
- :mod:`.wire`: unknown fields refused by number;
- :mod:`.errors`: the ledger's typed errors as status codes.

See docs/GRPC.md.
"""

from ledger.cli.grpc_server.runner import LedgerServer, ServeOptions, run, serve

__all__ = ["LedgerServer", "ServeOptions", "run", "serve"]
