"""mlinfra quickstart: the model lifecycle on local defaults.

Run it with `make demo` (does all set-up and starts the local services first), or on its own with
`pulumi up` from this folder once `make setup services` has run. Each lifecycle step lands here as its component
does; today it records the local platform the next steps deploy onto.
"""

import pulumi

from mlinfra import services

pulumi.export("registry", services.registry_url())
pulumi.export("blob_endpoint", services.azurite_blob_url())
pulumi.export("mqtt_broker", services.mqtt_url())
