"""A tiny service."""

VERSION = "1.0"
