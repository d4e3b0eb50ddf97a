"""Pulumi dynamic providers behind mlinfra's components. They run in the engine's provider process, import only
mlinfra, and hold no state of their own (credentials arrive as secret inputs, never in the pickled provider)."""
