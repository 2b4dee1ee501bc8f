"""The server's probes: the standard gRPC health service, over the server's mTLS.

Kubernetes' own gRPC probe speaks plaintext only, and the server serves mTLS on its one port,
so the kubelet runs this in the server's container instead (the chart mounts it from a
ConfigMap). It is docker compose's healthcheck, with one difference:

    python grpc_health_probe.py --address 127.0.0.1:50051 [--any-answer]

exits 0 when the server answers SERVING; with --any-answer (liveness) when it answers at all,
SERVING or NOT_SERVING: the server says NOT_SERVING while MongoDB or S3 is unreachable and
during its graceful stop, which must take it out of the Service, not restart it.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True, help="HOST:PORT of the server")
    parser.add_argument("--service", default="", help="the health service name ('': all)")
    parser.add_argument("--ca", default="/run/secrets/client-tls/ca.crt")
    parser.add_argument("--cert", default="/run/secrets/client-tls/tls.crt")
    parser.add_argument("--key", default="/run/secrets/client-tls/tls.key")
    parser.add_argument("--server-name", default="checkout", help="the name in its certificate")
    parser.add_argument("--timeout", type=float, default=4.0)
    parser.add_argument("--any-answer", action="store_true", help="alive: any health answer")
    args = parser.parse_args()

    def read(path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(args.address, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"health check failed: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING or args.any_answer:
        return 0
    print(f"health: {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
