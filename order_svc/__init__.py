"""Order service: takes orders over HTTP, owns their status and deadlines, and keeps
every saga's timeline. Steps 1, 4, c1 and c3 of DESIGN §3."""
