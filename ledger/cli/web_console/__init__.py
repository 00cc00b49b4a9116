"""``ledger console``: a live operator console in the browser, served by the ledger.

Server-rendered HTML from the standard library's HTTP server (no web framework, no
template engine, no JavaScript build: nothing to install beyond the ledger), read
from the views and the ledger; a few lines of JavaScript follow the log with
server-sent events and refresh the page's main part when something changed, so
every page reads without JavaScript and updates live with it.

- :mod:`~ledger.cli.web_console.pages`: the pages, as HTML;
- :mod:`~ledger.cli.web_console.charts`: the overview's rate charts, as inline SVG;
- :mod:`~ledger.cli.web_console.rebuilds`: rebuilds of the views asked from the projections
  page, each in a thread of the console, and their progress;
- :mod:`~ledger.cli.web_console.server`: the HTTP server, its routes, authentication and the
  live stream.
"""
