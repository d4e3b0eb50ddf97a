"""An Azure ML-style scoring script: init() once, run(raw_data) per /score request.

It records what it scores with mlinfra's collection SDK (in the spirit of azureml-ai-monitoring): behind an endpoint
with a DataCollection, each request's inputs and outputs land in its storage, correlated by the request id; run
anywhere else (locally, in a test), collect() does nothing.
"""

import json
import os

import numpy as np
import onnxruntime as ort

from mlinfra_scoring.collection import Collector

inputs_collector = Collector(name="model_inputs")
outputs_collector = Collector(name="model_outputs")
session = None


def init():
    global session
    session = ort.InferenceSession(os.environ["MLINFRA_MODEL_PATH"], providers=["CPUExecutionProvider"])


def run(raw_data):
    rows = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    context = inputs_collector.collect(rows)
    probabilities = session.run(None, {"input": rows})[0]
    result = {
        "label": probabilities.argmax(axis=1).tolist(),
        "confidence": probabilities.max(axis=1).tolist(),
    }
    outputs_collector.collect(result, context)
    return result
