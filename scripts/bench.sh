#!/usr/bin/env bash
# Side-by-side benchmark of our Rust approvals service and the ADR v1 FastAPI peer.
#
# In one run: builds `approvals` and `approvals-bench` (release), then for each target in turn
# (never both at once, so they do not compete for the cores) starts a private redis-server on a
# free loopback port, the target itself on another, reading one generated config TOML, drives
# the same load at it (submit; submit-then-accept; decision wake-up latency of N parked
# long-polls) with target/release/approvals-bench, and stops everything. Ends with a summary
# table (ops/s, p50/p99, ratio) and the issue's two targets. All children are stopped on exit,
# including Ctrl-C, within a bounded time.
#
# Usage: scripts/bench.sh
# Environment (all optional):
#   BENCH_SECS=10          measured seconds per throughput scenario (after BENCH_WARMUP)
#   BENCH_WARMUP=1         warm-up seconds per throughput scenario, not counted
#   BENCH_CONCURRENCY=64   closed-loop workers (connections) per throughput scenario
#   BENCH_WAITERS=200      parked long-polls in the wake-up scenario
#   BENCH_TARGETS="ours peer"   which targets to run, in order
#   BENCH_ROUNDS=1         repeat the targets (alternating) this often; the summary shows medians
#   BENCH_THREADS=2        worker threads of the load generator
#   PEER_DIR=<repo>/../shared/peers/adr_fastapi   the ADR peer (run.sh, app.py)
#   WORKERS=2              uvicorn workers of the peer (read by the peer's run.sh)
#   BENCH_KEEP=1           keep the temp dir (configs, logs, RESULT lines) after a good run
#   BENCH_STRICT=1         exit 1 when a target of the issue is missed
#   BENCH_BUILD=0          skip the cargo build and use the release binaries already built
#   BENCH_BEFORE_BIN=path  an earlier build's `approvals` binary: adds the target `before` (run
#                          exactly like `ours`) and a before/after table, to show what a change
#                          did to throughput in the same run
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEER_DIR=${PEER_DIR:-$(dirname "$repo")/shared/peers/adr_fastapi}
BENCH_SECS=${BENCH_SECS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-64}
BENCH_WAITERS=${BENCH_WAITERS:-200}
BENCH_TARGETS=${BENCH_TARGETS:-ours peer}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
if [ -n "${BENCH_BEFORE_BIN:-}" ]; then
  case " $BENCH_TARGETS " in *" before "*) ;; *) BENCH_TARGETS="before $BENCH_TARGETS" ;; esac
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
tenant=bench

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench.sh: %s\n' "$*" >&2; exit 1; }

for tool in cargo redis-server redis-cli curl python3 sha256sum setsid; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
for target in $BENCH_TARGETS; do
  case $target in
    ours) ;;
    peer) [ -x "$PEER_DIR/run.sh" ] || die "no ADR peer at $PEER_DIR (set PEER_DIR)" ;;
    before) [ -x "${BENCH_BEFORE_BIN:-}" ] || die "target 'before' needs BENCH_BEFORE_BIN" ;;
    *) die "unknown target '$target' in BENCH_TARGETS (ours, peer, before)" ;;
  esac
done

# The generated config file is the whole configuration: no APPROVALS_* variable of the caller
# may change (or, being unknown, break) the service under test.
while IFS= read -r var; do
  case $var in APPROVALS_*) unset "$var" ;; esac
done < <(compgen -e)
unset RUST_LOG

work=$(mktemp -d "${TMPDIR:-/tmp}/approvals-bench.XXXXXX")
results="$work/results.txt"
: >"$results"

# Children run in their own process groups (setsid), so stopping one stops what it spawned
# (uvicorn's workers). `live` holds the ones not yet stopped.
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
  local pid
  for pid in "${live[@]}"; do stop_group "$pid"; done
  if [ "$rc" -eq 0 ] && [ "$BENCH_KEEP" != 1 ]; then
    rm -rf "$work"
  else
    printf 'bench.sh: configs and logs kept in %s\n' "$work" >&2
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
sha256_hex() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
toml_string() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# --- build -----------------------------------------------------------------------------------
packages=(-p approvals-bench)
case " $BENCH_TARGETS " in *" ours "*) packages+=(-p approvals) ;; esac
if [ "$BENCH_BUILD" = 1 ]; then
  say "cargo build --release ${packages[*]}"
  (cd "$repo" && cargo build --release "${packages[@]}")
fi
bench_bin="$target_dir/release/approvals-bench"
approvals_bin="$target_dir/release/approvals"
case " $BENCH_TARGETS " in
  *" ours "*)
    "$approvals_bin" serve --help >/dev/null 2>&1 ||
      die "$approvals_bin has no 'serve' command yet (run only the peer with BENCH_TARGETS=peer)"
    ;;
esac

# --- tokens: random each run, configured by digest only --------------------------------------
agent_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
reviewer_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export BENCH_AGENT_TOKEN=$agent_token BENCH_REVIEWER_TOKEN=$reviewer_token BENCH_TENANT=$tenant

# One config format for both: the peer reads server.listen, redis.url, approvals.* and
# [[auth.tokens]] with tomllib and ignores the rest ([policy], [log]).
write_config() { # file http_port redis_port
  cat >"$1" <<EOF
# Written by scripts/bench.sh for one benchmark target; read by the Rust service and the ADR peer.
[server]
listen = "127.0.0.1:$2"

[redis]
url = "redis://127.0.0.1:$3/0"

[approvals]
default_ttl = "1h"
# A throughput run parks hundreds of thousands of approvals in one tenant: no quota here.
max_pending_per_tenant = 1000000000

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
}

# --- one target: redis, server, three scenarios, stop -----------------------------------------
run_target() {
  local target=$1 dir="$work/$1"
  mkdir -p "$dir"
  local http_port redis_port
  http_port=$(free_port)
  redis_port=$(free_port)
  local config="$dir/config.toml"
  write_config "$config" "$http_port" "$redis_port"

  say "$target: redis-server on 127.0.0.1:$redis_port"
  spawn "$dir/redis.out" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
    --appendonly no --dir "$dir" --logfile "$dir/redis.log"
  local redis_pid=$spawned
  wait_until "$redis_pid" 10 "$dir/redis.log" "redis-server" redis_ok "$redis_port"

  local url="http://127.0.0.1:$http_port" server_pid
  case $target in
    ours | before)
      local bin=$approvals_bin
      [ "$target" = before ] && bin=$BENCH_BEFORE_BIN
      say "$target: $bin serve on $url"
      spawn "$dir/server.log" "$bin" serve --config "$config"
      server_pid=$spawned
      wait_until "$server_pid" 60 "$dir/server.log" "approvals serve" http_ok "$url/healthz"
      ;;
    peer)
      # The first run creates the peer's virtualenv (pip install), hence the long wait.
      say "peer: $PEER_DIR/run.sh on $url"
      spawn "$dir/server.log" "$PEER_DIR/run.sh" "$config"
      server_pid=$spawned
      wait_until "$server_pid" 300 "$dir/server.log" "ADR peer" http_ok "$url/readyz"
      ;;
  esac

  # A failed scenario (its reason is on stderr) does not stop the others; the exit status says.
  local bench=("$bench_bin" --target "$target" --url "$url") load scenario
  load=(--duration "${BENCH_SECS}s" --warmup "${BENCH_WARMUP}s" --concurrency "$BENCH_CONCURRENCY")
  for scenario in submit submit-decide wakeup; do
    local args=("${load[@]}")
    [ "$scenario" = wakeup ] && args=(--waiters "$BENCH_WAITERS")
    run_child "${bench[@]}" "$scenario" "${args[@]}" >>"$results" || {
      say "$target: scenario $scenario failed"
      failed=1
    }
  done

  stop_group "$server_pid"
  stop_group "$redis_pid"
}

say "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); ${BENCH_ROUNDS} round(s) of: ${BENCH_SECS}s x ${BENCH_CONCURRENCY} workers per throughput scenario, ${BENCH_WAITERS} waiters"
failed=0
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
  ((BENCH_ROUNDS == 1)) || say "round $round of $BENCH_ROUNDS"
  for target in $BENCH_TARGETS; do
    run_target "$target"
  done
done

# --- summary: medians over the rounds ------------------------------------------------------
echo
cat "$results"
echo
awk -v cores="$(nproc)" -v loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" -v strict="$BENCH_STRICT" '
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
  function med(key, arr) { return (key in have) ? median(arr[key]) : "-" }
  function fmt(v, spec) { return v == "-" ? "-" : sprintf(spec, v) }
  function ratio(a, b) { return (a == "-" || b == "-" || b + 0 == 0) ? "-" : sprintf("%.2fx", a / b) }
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
    printf "%-14s %11s %11s %10s %19s %19s %10s\n", "scenario", "ours ops/s", "peer ops/s", "ratio",
      "ours p50/p99 ms", "peer p50/p99 ms", "errors o/p"
    n = split("submit submit-decide wakeup", sc, " ")
    for (i = 1; i <= n; i++) {
      o = "ours" SUBSEP sc[i]; p = "peer" SUBSEP sc[i]
      if (sc[i] == "wakeup") {
        # Throughput means nothing here: the ratio is the peer p99 over ours (higher is better).
        oo = "-"; po = "-"; r = ratio(med(p, p99), med(o, p99)) " p99"
      } else {
        oo = med(o, ops); po = med(p, ops); r = ratio(oo, po)
      }
      printf "%-14s %11s %11s %10s %19s %19s %10s\n", sc[i], fmt(oo, "%.1f"), fmt(po, "%.1f"), r,
        fmt(med(o, p50), "%.2f") "/" fmt(med(o, p99), "%.2f"),
        fmt(med(p, p50), "%.2f") "/" fmt(med(p, p99), "%.2f"),
        ((o in have) ? err[o] : "-") "/" ((p in have) ? err[p] : "-")
    }
    if (("before" SUBSEP "submit") in have) {
      printf "\n%-14s %11s %11s %10s %19s %19s\n", "scenario", "ours ops/s", "before ops/s", "ratio",
        "ours p50/p99 ms", "before p50/p99 ms"
      for (i = 1; i <= n; i++) {
        o = "ours" SUBSEP sc[i]; b = "before" SUBSEP sc[i]
        if (sc[i] == "wakeup") {
          oo = "-"; bo = "-"; r = ratio(med(b, p99), med(o, p99)) " p99"
        } else {
          oo = med(o, ops); bo = med(b, ops); r = ratio(oo, bo)
        }
        printf "%-14s %11s %11s %10s %19s %19s\n", sc[i], fmt(oo, "%.1f"), fmt(bo, "%.1f"), r,
          fmt(med(o, p50), "%.2f") "/" fmt(med(o, p99), "%.2f"),
          fmt(med(b, p50), "%.2f") "/" fmt(med(b, p99), "%.2f")
      }
    }
    printf "nproc=%s load_average=%s (medians over the rounds; the machine is shared, compare ratios)\n", cores, loadavg
    missed = 0
    o = "ours" SUBSEP "submit"; p = "peer" SUBSEP "submit"
    if ((o in have) && (p in have) && med(p, ops) + 0 > 0) {
      x = med(o, ops) / med(p, ops); ok = x >= 3
      printf "target: submit throughput >= 3x the peer: %s (%.2fx)\n", ok ? "MET" : "MISSED", x
      missed += !ok
    }
    o = "ours" SUBSEP "wakeup"
    if (o in have) {
      x = med(o, p99); ok = x != "-" && x + 0 < 10
      printf "target: decision wake-up p99 < 10 ms: %s (%s ms)\n", ok ? "MET" : "MISSED", fmt(x, "%.2f")
      missed += !ok
    }
    exit (strict == 1 && missed > 0) ? 1 : 0
  }
' "$results"
[ "$failed" = 0 ] || die "some scenarios failed (see above)"
