"""BentoML service: no OIP route of its own, so the OIP JSON body is mapped onto an API at the OIP path."""

import bentoml
import numpy as np
from common import oip_response, session


@bentoml.service(workers=1)
class MLP:
    def __init__(self) -> None:
        self.sess = session()

    @bentoml.api(route="/v2/models/mlp/infer")
    def infer(self, inputs: list, id: str | None = None) -> dict:
        t = inputs[0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        return oip_response("mlp", self.sess.run(None, {"input": x})[0], id)
