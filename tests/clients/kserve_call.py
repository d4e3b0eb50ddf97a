"""KServe's Python clients, run in a process of their own: kserve registers the protocol's messages under the
same names as tritonclient's gRPC module, and protobuf refuses both in one process (`duplicate symbol
'inference.ServerLiveRequest'`), so the tests call this script instead of importing kserve.

    python tests/clients/kserve_call.py rest|grpc URL KEY MODEL ROWS.npy OUT.npy

Sends ROWS as the model's input named "input" (FP32) with the client's default encoding (binary for REST, raw
contents for gRPC), writes the first output to OUT.npy and prints {"binary_request": bool}.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(protocol: str, url: str, key: str, model: str, rows_file: str, out_file: str) -> None:
    rows = np.load(rows_file)
    x = InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)  # the client's default: binary_data=True
    request = InferRequest(model_name=model, infer_inputs=[x])
    if protocol == "rest":
        binary = bool(request.to_rest()[1])  # a JSON length: the body is binary
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            response = await rest.infer(
                url, request, model_name=model, headers={"Authorization": f"Bearer {key}"}
            )
        finally:
            await rest.close()
    else:
        binary = True
        grpc_client = InferenceGRPCClient(url, channel_args=[("grpc.enable_retries", 0)])
        try:
            response = await grpc_client.infer(request, headers=(("authorization", f"Bearer {key}"),))
        finally:
            await grpc_client.close()
    np.save(out_file, response.outputs[0].as_numpy())
    print(json.dumps({"binary_request": binary}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
