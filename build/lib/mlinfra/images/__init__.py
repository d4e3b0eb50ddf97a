"""Step 2, package (``mlinfra:images:*``): scoring images built reproducibly without a Docker daemon.

- ``scoring_image.py`` — the component ScoringImage; ``provider.py`` — its dynamic provider
- ``builder.py`` — what goes into an image (base, dependencies, app, one layer per model) and `docker build`
- ``layers.py`` — deterministic tar layers; ``oci.py`` — the OCI registry client (blobs, manifests, mounts)
"""
