#!/usr/bin/env bash
# Regenerates the Python modules of the Open Inference Protocol's gRPC
# messages (worker/oip_proto/*_pb2.py and .pyi) from their .proto, with the
# grpcio-tools version the dev extra pins (the output depends on it).
#   scripts/gen-proto.sh [OUT_DIR]   (default: the repository itself)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python="${PYTHON:-.venv/bin/python}"
"$python" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" \
    worker/oip_proto/oip_v2.proto
