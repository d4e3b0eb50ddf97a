"""LitServe: no OIP route of its own, so decode/encode map the OIP JSON body at the OIP path."""

import litserve as ls
import numpy as np
from common import PORT, oip_response, session


class API(ls.LitAPI):
    def setup(self, device):
        self.sess = session()

    def decode_request(self, request):
        t = request["inputs"][0]
        return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

    def predict(self, x):
        return self.sess.run(None, {"input": x})[0]

    def encode_response(self, y):
        return oip_response("mlp", y)


if __name__ == "__main__":
    server = ls.LitServer(API(), accelerator="cpu", workers_per_device=1, api_path="/v2/models/mlp/infer")
    server.run(port=PORT, generate_client_file=False)
