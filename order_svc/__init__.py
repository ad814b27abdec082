"""Order service: takes orders over HTTP, owns their status and deadlines, and keeps
every saga's timeline. Steps 1, 4, c1, c3 and c4 of docs/design.md §3."""
