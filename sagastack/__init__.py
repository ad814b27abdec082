"""Runs the whole system on one machine: embedded broker and database, the three
services as processes, and the tools that drive it (demo, bench, invariants)."""
