#!/usr/bin/env bash
# Regenerate the Python code of the resource contract (protos/**/*.proto):
# ledger/api/**/*_pb2.py (protoc) and *_pb2.pyi (mypy-protobuf), plus the
# __init__.py of every generated package. Deterministic: running it twice
# gives byte-identical files.
#
# Usage: scripts/gen_protos.sh [--out DIR]
#   --out DIR  write into DIR instead of the repository root (DIR/ledger/api/...);
#              used by scripts/check_protos.sh to detect stale generated code.
# Environment: PYTHON  interpreter with grpcio-tools and mypy-protobuf
#                      (default: .venv/bin/python of the repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

OUT="$ROOT"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out)
      [[ $# -ge 2 ]] || { echo "gen_protos: --out needs a directory" >&2; exit 2; }
      OUT="$2"
      shift 2
      ;;
    *)
      echo "gen_protos: unknown argument: $1 (usage: $0 [--out DIR])" >&2
      exit 2
      ;;
  esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute, relative to the caller's directory
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if ! "$PYTHON" -c 'import grpc_tools.protoc, mypy_protobuf' 2>/dev/null; then
  echo "gen_protos: $PYTHON lacks grpcio-tools or mypy-protobuf (set \$PYTHON)" >&2
  exit 1
fi

# The well-known types (google/protobuf/*.proto) bundled with grpc_tools.
WKT_INCLUDE="$("$PYTHON" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

# protoc-gen-mypy is installed next to the interpreter's scripts.
SCRIPTS_DIR="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
MYPY_PLUGIN="$SCRIPTS_DIR/protoc-gen-mypy"
if [[ ! -x "$MYPY_PLUGIN" ]]; then
  MYPY_PLUGIN="$(command -v protoc-gen-mypy || true)"
fi
if [[ -z "$MYPY_PLUGIN" || ! -x "$MYPY_PLUGIN" ]]; then
  echo "gen_protos: protoc-gen-mypy not found (install mypy-protobuf)" >&2
  exit 1
fi

# All sources, in a fixed (byte-wise) order.
mapfile -t PROTOS < <(find protos -type f -name '*.proto' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  echo "gen_protos: no .proto files under protos/" >&2
  exit 1
fi

GEN="$OUT/ledger/api"

# Remove everything previously generated (all of ledger/api is generated),
# so removed or renamed protos leave nothing behind.
if [[ -d "$GEN" ]]; then
  find "$GEN" -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '__init__.py' \) -delete
  find "$GEN" -depth -type d -name '__pycache__' -exec rm -rf {} +
  find "$GEN" -depth -type d -empty -delete
fi

"$PYTHON" -m grpc_tools.protoc \
  -I protos \
  -I "$WKT_INCLUDE" \
  --plugin=protoc-gen-mypy="$MYPY_PLUGIN" \
  --python_out="$OUT" \
  --mypy_out=quiet:"$OUT" \
  "${PROTOS[@]}"

# Make every generated directory a regular package. ledger/__init__.py is not
# ours (the application package owns it), so stop at ledger/api.
printf '"""Generated protobuf modules of the resource contract (protos/); regenerate with scripts/gen_protos.sh."""\n' \
  > "$GEN/__init__.py"
while IFS= read -r dir; do
  [[ "$dir" == "$GEN" ]] && continue
  : > "$dir/__init__.py"
done < <(find "$GEN" -type d | LC_ALL=C sort)

count="$(find "$GEN" -type f -name '*_pb2.py' | wc -l | tr -d ' ')"
echo "gen_protos: generated $count modules from ${#PROTOS[@]} protos into $GEN"
