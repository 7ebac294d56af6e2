"""The demo: synthetic traffic for the five controllers and the live run that sends it."""
