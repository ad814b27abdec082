"""``sagactl`` — the operator's command line for a running system (see ``sagactl --help``)."""
