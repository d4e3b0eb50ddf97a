"""Steps 3 and 5, deploy and update (``mlinfra:endpoints:*``): endpoints and their progressive rollouts.

- ``cloud_endpoint.py`` — the component CloudEndpoint (args, validation into ``spec.py``'s typed EndpointSpec)
- ``provider.py`` — its dynamic providers (keys; the Local Docker endpoint), thin: they call the rollout engine
- ``rollout.py`` — the rollout engine: start a revision, wait ready, shift traffic in steps, read gates, roll
  back, clean up — against a target through a small interface (``Target``)
- ``local.py`` — the Local Docker target (containers, nginx router); ``kubernetes.py`` — the Kubernetes objects
- ``plan.py`` — traffic plans and validation; ``gates.py`` — gates read from /metrics; ``nginx.py`` — router config
- ``fpga_endpoint.py`` — FpgaEndpoint; ``quantize.py`` + ``quantized_provider.py`` — INT8 quantization and its gate
"""
