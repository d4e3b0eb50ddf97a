"""mlinfra's scoring server: ONNX models over the Open Inference Protocol v2 (REST) and Azure ML-style `/score`.

Runs inside every ScoringImage, behind every endpoint and on edge devices. It never imports pulumi: an image or a
device carries only what it runs (aiohttp, numpy, onnxruntime; uvloop and orjson when present).
"""

__version__ = "0.1.0"
