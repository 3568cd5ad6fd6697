"""The console's pages, one module per area; each module's `routes(console)` lists its routes.
This tuple is the one registry: a new area is a module here."""

from __future__ import annotations

from cleanroom.console.pages import account, audit, budgets, hospital, inbox, releases

AREAS = (account, inbox, budgets, audit, releases, hospital)
