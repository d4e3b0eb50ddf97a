"""Shared by the peer adapters: the ONNX session every server wraps (same settings as mlinfra's)."""

import os

import numpy as np
import onnxruntime as ort

MODEL = os.environ["BENCH_MODEL"]
PORT = int(os.environ["BENCH_PORT"])


def session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(MODEL, sess_options=opts, providers=["CPUExecutionProvider"])


def oip_response(name: str, y: np.ndarray, rid=None) -> dict:
    out = {
        "model_name": name,
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
        ],
    }
    if rid is not None:
        out["id"] = rid
    return out
