"""Step 4, monitor (``mlinfra:monitoring:*``): capture what endpoints score, and compare it with a baseline.

- ``data_collection.py`` — the component DataCollection; ``provider.py`` — its storage (container + write-only SAS)
- ``drift.py`` — drift reports (PSI, KS, prediction drift; HTML with plots) over collected data
"""
