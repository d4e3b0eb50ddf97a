"""The local lab: what runs mlinfra on one machine for the demo, the tests and the benchmarks. The library never
imports it (an import-linter contract in ``make check``).

- ``services.py`` — Docker, the OCI registry, Azurite, Mosquitto and the base images, started on loopback
- ``broker.py`` — device credentials and ACLs on the local Mosquitto
- ``cluster.py`` — a local Kubernetes control plane (LocalCluster)
- ``samples.py`` — small sample models (an MLP, a scikit-learn classifier, a model of every datatype)
"""
