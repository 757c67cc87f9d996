"""The ``imagesync`` command line."""

import sys

# httpx's package __init__ imports its own command-line client (httpx._main) whenever click, pygments and rich
# are importable, and rich is a dependency here (the terminal display): 30 ms and three libraries on every
# start, for a CLI imagesync never runs. A None entry makes that optional import fail as if they were missing,
# so rich is loaded only when the terminal display is drawn. Set before the engine first imports httpx.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
