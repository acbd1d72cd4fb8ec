"""Live pages: the tap's digests pushed to browsers over websockets (see hub.py)."""

# Seconds between two updates of a live page, by default (FLOWSCOPE_LIVE_INTERVAL): 5 a second.
# An event arriving at a random moment waits for the next update up to this long (95% of this at
# p95), on top of the tap's commit and the render: 0.2 s keeps publish -> page p95 under 250 ms
# (bench/live.py) while bounding what each page receives whatever the event rate.
DEFAULT_INTERVAL = 0.2
