"""mlinfra."""
