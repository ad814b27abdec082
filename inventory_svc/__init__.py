"""Inventory service: owns the catalogue (prices) and stock. Reserves, commits and
releases stock for orders: steps 2, 5 and c2 of DESIGN §3."""
