"""Router: turns model approvals into experiments and keeps the routing table."""
