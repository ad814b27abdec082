"""Inventory service: owns the catalogue (prices) and stock. Reserves, commits and
releases stock for orders: steps 2, 5, c2 and c5 of docs/design.md §3."""
