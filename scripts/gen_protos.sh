#!/usr/bin/env bash
# Regenerate the Python code of the contract (protos/**/*.proto):
# ledger/api/**/*_pb2.py (protoc) and *_pb2.pyi (mypy-protobuf), the resource
# messages; ledger/grpc/**/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py (grpc_tools'
# grpc_python_out) and *_pb2_grpc.pyi (mypy-protobuf's protoc-gen-mypy_grpc),
# the platform's services that `ledger serve` serves; plus the __init__.py of
# every generated package. Deterministic: running it twice gives byte-identical
# files.
#
# Usage: scripts/gen_protos.sh [--out DIR]
#   --out DIR  write into DIR instead of the repository root (DIR/ledger/api/...,
#              DIR/ledger/grpc/...);
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
MYPY_GRPC_PLUGIN="$SCRIPTS_DIR/protoc-gen-mypy_grpc"
if [[ ! -x "$MYPY_GRPC_PLUGIN" ]]; then
  MYPY_GRPC_PLUGIN="$(command -v protoc-gen-mypy_grpc || true)"
fi
if [[ -z "$MYPY_GRPC_PLUGIN" || ! -x "$MYPY_GRPC_PLUGIN" ]]; then
  echo "gen_protos: protoc-gen-mypy_grpc not found (install mypy-protobuf)" >&2
  exit 1
fi

# All sources, in a fixed (byte-wise) order. The services (ledger/grpc) also get
# gRPC stubs; the resource messages (ledger/api) do not.
mapfile -t PROTOS < <(find protos -type f -name '*.proto' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  echo "gen_protos: no .proto files under protos/" >&2
  exit 1
fi
mapfile -t SERVICE_PROTOS < <(find protos/ledger/grpc -type f -name '*.proto' 2>/dev/null | LC_ALL=C sort)

# Every generated package: ledger/api and ledger/grpc are generated, all of them.
GENERATED=(api grpc)

# Remove everything previously generated, so removed or renamed protos leave
# nothing behind.
for name in "${GENERATED[@]}"; do
  gen="$OUT/ledger/$name"
  if [[ -d "$gen" ]]; then
    find "$gen" -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \
      -o -name '*_pb2_grpc.pyi' -o -name '__init__.py' \) -delete
    find "$gen" -depth -type d -name '__pycache__' -exec rm -rf {} +
    find "$gen" -depth -type d -empty -delete
  fi
done

"$PYTHON" -m grpc_tools.protoc \
  -I protos \
  -I "$WKT_INCLUDE" \
  --plugin=protoc-gen-mypy="$MYPY_PLUGIN" \
  --python_out="$OUT" \
  --mypy_out=quiet:"$OUT" \
  "${PROTOS[@]}"

if [[ ${#SERVICE_PROTOS[@]} -gt 0 ]]; then
  "$PYTHON" -m grpc_tools.protoc \
    -I protos \
    -I "$WKT_INCLUDE" \
    --plugin=protoc-gen-mypy_grpc="$MYPY_GRPC_PLUGIN" \
    --grpc_python_out="$OUT" \
    --mypy_grpc_out=quiet:"$OUT" \
    "${SERVICE_PROTOS[@]}"
  # A proto without services gets an empty stub module: none is kept.
  while IFS= read -r stub; do
    if ! grep -q 'Servicer' "$stub"; then
      rm -f "$stub" "${stub%.py}.pyi"
    fi
  done < <(find "$OUT/ledger/grpc" -type f -name '*_pb2_grpc.py' | LC_ALL=C sort)
fi

# Make every generated directory a regular package. ledger/__init__.py is not
# ours (the application package owns it), so stop at ledger/api and ledger/grpc.
printf '"""Generated protobuf modules of the resource contract (protos/); regenerate with scripts/gen_protos.sh."""\n' \
  > "$OUT/ledger/api/__init__.py"
if [[ -d "$OUT/ledger/grpc" ]]; then
  printf '"""Generated protobuf and gRPC modules of the platform'"'"'s services (protos/ledger/grpc); regenerate with scripts/gen_protos.sh."""\n' \
    > "$OUT/ledger/grpc/__init__.py"
fi
for name in "${GENERATED[@]}"; do
  gen="$OUT/ledger/$name"
  [[ -d "$gen" ]] || continue
  while IFS= read -r dir; do
    [[ "$dir" == "$gen" ]] && continue
    : > "$dir/__init__.py"
  done < <(find "$gen" -type d | LC_ALL=C sort)
done

count="$(find "$OUT/ledger/api" "$OUT/ledger/grpc" -type f -name '*_pb2.py' 2>/dev/null | wc -l | tr -d ' ')"
stubs="$(find "$OUT/ledger/grpc" -type f -name '*_pb2_grpc.py' 2>/dev/null | wc -l | tr -d ' ')"
echo "gen_protos: generated $count modules and $stubs gRPC stub modules from ${#PROTOS[@]} protos into $OUT/ledger/{api,grpc}"
