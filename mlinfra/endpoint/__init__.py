"""CloudEndpoint's parts: planning (plan.py), the router's nginx configuration (nginx.py), rollout gates read from
/metrics (gates.py), the Local Docker target (local.py) and the Kubernetes target (k8s.py)."""
