"""Memory accounting (placeholder until the planner lands)."""


class _Ledger:
    active = None


ledger = _Ledger()
