"""Offline step (not part of the stack): train a small scikit-learn MLP on synthetic data and convert it to ONNX
with skl2onnx; also write calibration rows, held-out validation rows and their labels.

.venv/bin/python train.py     # → .mlinfra/model.onnx, calibration.npy, validation.npy, labels.npy
"""

from pathlib import Path

from mlinfra.lab.samples import write_sklearn_classifier

if __name__ == "__main__":
    for kind, path in write_sklearn_classifier(Path(__file__).parent / ".mlinfra").items():
        print(f"{kind:12s} {path}")
