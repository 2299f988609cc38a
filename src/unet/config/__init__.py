"""Checks of composed configs and the command line, before anything runs."""
