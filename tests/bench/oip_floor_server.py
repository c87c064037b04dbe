"""The transport floor for the serving bench: an OIP ModelInfer/ModelStreamInfer servicer on a plain
grpc.aio server that returns one prebuilt response, with no model, validation or logging. Whatever
it cannot exceed on this machine with the bench's load generator, no Python gRPC server can.

Usage: python -m tests.bench.oip_floor_server PORT
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

_OUT = oip.ModelInferResponse.InferOutputTensor
RESPONSE = oip.ModelInferResponse(
    model_name="floor",
    model_version="1",
    outputs=[
        _OUT(name="label", datatype="INT64", shape=[1]),
        _OUT(name="probabilities", datatype="FP32", shape=[1, 2]),
    ],
    raw_output_contents=[np.zeros(1, np.int64).tobytes(), np.zeros(2, np.float32).tobytes()],
)


class FloorServicer(oip_grpc.GRPCInferenceServiceServicer):
    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return oip.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        return RESPONSE

    async def ModelStreamInfer(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for _ in request_iterator:
            yield oip.ModelStreamInferResponse(infer_response=RESPONSE)


async def main(port: int) -> None:
    server = grpc.aio.server()
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
