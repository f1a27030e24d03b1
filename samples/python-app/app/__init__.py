"""A tiny app: counts words of its own source, proves it runs where it was built."""
