#!/usr/bin/env bash
# Check the resource contract (protos/):
#   1. buf lint (rules in protos/buf.yaml);
#   2. buf breaking (FILE rules) against the contract of the previous commit,
#      when HEAD~1 exists and has protos/;
#   3. staleness: the generated code under ledger/api and ledger/grpc (as checked
#      out) must equal a fresh regeneration (scripts/gen_protos.sh into a temporary directory).
# Runs every step, then exits non-zero if any failed (naming which).
# Environment: BUF     buf binary (default: .venv/bin/buf of the repository)
#              PYTHON  passed through to scripts/gen_protos.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUF="${BUF:-$ROOT/.venv/bin/buf}"
if [[ ! -x "$BUF" ]] && ! command -v "$BUF" >/dev/null 2>&1; then
  echo "check_protos: buf not found at $BUF (set \$BUF)" >&2
  exit 1
fi

failed=()

echo "== buf lint protos"
if "$BUF" lint protos; then
  echo "ok"
else
  failed+=("buf lint")
fi

echo "== buf breaking protos (FILE)"
if git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null \
  && [[ "$(git cat-file -t 'HEAD~1:protos' 2>/dev/null || true)" == "tree" ]]; then
  if "$BUF" breaking protos --against ".git#ref=HEAD~1,subdir=protos"; then
    echo "ok: no breaking change against HEAD~1 ($(git rev-parse --short HEAD~1))"
  else
    failed+=("buf breaking (against HEAD~1)")
  fi
else
  echo "skipped: no previous contract to compare against (HEAD~1 does not exist or has no protos/)"
fi

echo "== generated code is up to date (ledger/api, ledger/grpc)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash scripts/gen_protos.sh --out "$tmp" >/dev/null
mkdir -p "$tmp/empty"

# Compare file lists and contents; caches are not generated code.
stale=()
for gen in ledger/api ledger/grpc; do
  committed="$gen"
  [[ -d "$committed" ]] || committed="$tmp/empty"  # everything will show as missing
  if [[ -d "$tmp/$gen" ]]; then
    while IFS= read -r rel; do
      if [[ ! -f "$gen/$rel" ]]; then
        stale+=("$gen/$rel (missing)")
      elif ! cmp -s "$tmp/$gen/$rel" "$gen/$rel"; then
        stale+=("$gen/$rel (differs)")
      fi
    done < <(cd "$tmp/$gen" && find . -type f ! -path '*/__pycache__/*' | sed 's|^\./||' | LC_ALL=C sort)
  fi
  while IFS= read -r rel; do
    if [[ ! -f "$tmp/$gen/$rel" ]]; then
      stale+=("$gen/$rel (not generated from any .proto: remove it)")
    fi
  done < <(cd "$committed" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sed 's|^\./||' | LC_ALL=C sort)
done

if [[ ${#stale[@]} -gt 0 ]]; then
  {
    echo "STALE generated code: ${#stale[@]} file(s) under ledger/api or ledger/grpc do not match protos/:"
    printf '  %s\n' "${stale[@]}"
    echo "Run: bash scripts/gen_protos.sh   (then commit ledger/api and ledger/grpc)"
  } >&2
  failed+=("stale generated code")
else
  echo "ok: ledger/api and ledger/grpc match protos/"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "check_protos: FAILED: $(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')" >&2
  exit 1
fi
echo "check_protos: all checks passed"
