#!/usr/bin/env bash
# The scrape-cost benchmark: parks METRICS_APPROVALS (default 1,000,000) pending approvals over
# METRICS_TENANTS (default 100) tenants in a fresh redis-server, starts the service (release)
# on it, and times GET /metrics and /healthz while scraping. Prints the scrape p50/p99, how
# long the background recompute of the pending figures takes, and the core count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The service reads APPROVALS_* and RUST_LOG from the environment: a caller's would change
# what is measured (a withdrawn result once came from such a variable).
unset RUST_LOG $(env | grep -o '^APPROVALS_[A-Z0-9_]*' || true)
export NO_PROXY='*' no_proxy='*'
target_dir=${CARGO_TARGET_DIR:-target}
# Waits (up to 30 s) until "$@" succeeds.
wait_for() {
  local deadline=$((SECONDS + 30))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "bench-metrics.sh: timed out waiting for: $*" >&2; exit 1; }
    sleep 0.1
  done
}
approvals=${METRICS_APPROVALS:-1000000}
tenants=${METRICS_TENANTS:-100}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release -q -p approvals -p approvals-bench
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --loglevel warning &
pids+=($!)
wait_for redis-cli -p "$redis_port" ping

"$target_dir"/release/approvals-metrics-bench seed --redis "redis://127.0.0.1:$redis_port/0" \
  --approvals "$approvals" --tenants "$tenants"
echo "redis memory: $(redis-cli -p "$redis_port" info memory | grep used_memory_human | tr -d '\r')"

api_port=$(free_port)
cat > "$work/config.toml" <<TOML
[server]
listen = "127.0.0.1:$api_port"
[redis]
url = "redis://127.0.0.1:$redis_port/0"
[policy]
dir = "$PWD/policies"
[log]
filter = "warn"
TOML
"$target_dir"/release/approvals serve --config "$work/config.toml" &
pids+=($!)
wait_for curl -sf --noproxy '*' "http://127.0.0.1:$api_port/healthz"

"$target_dir"/release/approvals-metrics-bench scrape --url "http://127.0.0.1:$api_port"
echo "nproc=$(nproc)"
