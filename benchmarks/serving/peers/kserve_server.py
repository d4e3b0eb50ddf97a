"""KServe model server (OIP v2 REST built in) wrapping the ONNX session."""

import os

import numpy as np
from common import PORT, session
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class MLP(Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.sess = session()
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32)
        y = self.sess.run(None, {"input": x})[0]
        out = InferOutput(name="probabilities", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)


if __name__ == "__main__":
    grpc = (
        os.environ.get("BENCH_GRPC") == "1"
    )  # benchmarks/serving/protocols.py: its gRPC front end on PORT + 1
    ModelServer(http_port=PORT, grpc_port=PORT + 1, workers=1, enable_grpc=grpc).start([MLP("mlp")])
