"""Step 3 at the edge (``mlinfra:edge:*``): models to device fleets over MQTT, targeted by device tags.

- ``edge_deployment.py`` — the component EdgeDeployment; ``provider.py`` — its dynamic provider (publish, gate)
- ``fleet.py`` — talking to any broker as the platform: twins and reports, manifests with signed download URLs
"""
