"""PyTriton: Triton's C++ HTTP front end (OIP v2) with its dynamic batcher, calling the ONNX session in Python."""

import os

import numpy as np
from common import PORT, session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

SESS = session()


@batch
def infer(input):
    return {"probabilities": SESS.run(None, {"input": input.astype(np.float32)})[0]}


config = TritonConfig(
    http_address="127.0.0.1",
    http_port=PORT,
    grpc_address="127.0.0.1",
    grpc_port=PORT + 1,
    metrics_port=PORT + 2,
    allow_metrics=False,
)
with Triton(config=config) as triton:
    triton.bind(
        model_name="mlp",
        infer_func=infer,
        inputs=[Tensor(name="input", dtype=np.float32, shape=(64,))],
        outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
        config=ModelConfig(max_batch_size=128, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
    )
    os.environ.get("BENCH_PORT")
    triton.serve()
