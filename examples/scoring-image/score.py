"""An Azure ML-style scoring script: init() once, run(raw_data) per /score request."""

import json
import os

import numpy as np
import onnxruntime as ort

session = None


def init():
    global session
    session = ort.InferenceSession(os.environ["MLINFRA_MODEL_PATH"], providers=["CPUExecutionProvider"])


def run(raw_data):
    rows = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    probabilities = session.run(None, {"input": rows})[0]
    return {"label": probabilities.argmax(axis=1).tolist(), "confidence": probabilities.max(axis=1).tolist()}
