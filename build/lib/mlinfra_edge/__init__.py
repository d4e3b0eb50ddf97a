"""mlinfra's edge agent: receives model deployments over MQTT, targeted by device tags (IoT Edge style), swaps
models in atomically, serves them with the scoring server and reports status. Never imports pulumi."""
