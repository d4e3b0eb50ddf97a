"""mlinfra's pulumi-policy pack: `rules.py` (the rules, standard library only) and `__main__.py` (the pack the
engine runs from this folder in its own virtualenv). See docs/gitops.md."""
