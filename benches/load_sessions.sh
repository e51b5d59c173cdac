#!/usr/bin/env bash
# Load comparison with session routes (issue 8), on loopback: the same wrk load against
#   upstream   - the upstream itself (nginx, 1 worker, `return 200` with a small body)
#   portcullis - Portcullis (release build, access log off) proxying to that upstream, no auth
#   bearer     - the same Portcullis process, a route with `auth: bearer`: every request
#                carries a valid RS256 token (verified once, then served from the token cache)
#   nginx      - nginx as a plain reverse proxy to the same upstream (keepalive pool)
#   session    - the same Portcullis process, a route with `auth: session` (memory store):
#                every request carries the session cookie of one signed-in browser
#   session_redis - a second Portcullis process, `auth: session` with the Redis store (its own
#                redis-server on a unix socket; hot sessions come from the in-process cache)
# The token and its JWKS come from `cargo run --example bench_token`; the upstream nginx also
# serves that JWKS as the issuer's jwks_uri. The sessions come from a sign-in with curl against
# the demo's development IdP (`cargo run --example bench_idp`, auto-approving one user).
# at each connection count in CONNS, for ROUNDS rounds (the order of targets alternates
# between rounds). Prints per-round numbers, medians, and Portcullis/nginx ratios.
#
# Usage: benches/load_sessions.sh   (from anywhere; one invocation does everything)
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [10] seconds per measurement  WARMUP [2] seconds before each
#   TARGETS ["upstream portcullis bearer session session_redis nginx"]  CONNS ["32 256"]  WORKERS [nproc] proxy threads/workers  WRK_THREADS [2]
#   BASE_PORT [18080] (uses BASE_PORT..BASE_PORT+6 on 127.0.0.1)
#   POOL [256] idle upstream connections kept: Portcullis pool_max_idle, and nginx
#              `keepalive` (per worker, so POOL/WORKERS each)
#   PATH_QUERY [/bench/items?id=42]  QUIET_WAIT [300] max seconds to wait for a quiet machine
#              (no rustc running) before each measurement; RETRIES [2] re-measurements when a
#              compiler ran during one (the load is recorded with every result either way)
#   RESULTS [unset] also write the per-measurement TSV to this file
#   CARGO_TARGET_DIR is honoured for the release build; SKIP_BUILD=1 uses the existing binary.
# Only 127.0.0.1 is ever targeted. Everything started here is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-"32 256"}
TARGETS=${TARGETS:-"upstream portcullis bearer session session_redis nginx"}
BEARER_PATH=${BEARER_PATH:-/secure/items?id=42}
SESSION_PATH=${SESSION_PATH:-/app/items?id=42}
WORKERS=${WORKERS:-$(nproc)}
WRK_THREADS=${WRK_THREADS:-2}
BASE_PORT=${BASE_PORT:-18080}
POOL=${POOL:-256}
PATH_QUERY=${PATH_QUERY:-/bench/items?id=42}
QUIET_WAIT=${QUIET_WAIT:-300}
RETRIES=${RETRIES:-2}

UP_PORT=$BASE_PORT
PC_PORT=$((BASE_PORT + 1))
ADMIN_PORT=$((BASE_PORT + 2))
NG_PORT=$((BASE_PORT + 3))
PR_PORT=$((BASE_PORT + 4))
PR_ADMIN_PORT=$((BASE_PORT + 5))
IDP_PORT=$((BASE_PORT + 6))
HOST=127.0.0.1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/portcullis
WORK=$(mktemp -d /tmp/portcullis-load.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)
PIDS=()

log() { printf '[load] %s\n' "$*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP_WORK:-} ]]; then
        log "work files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building release binary (target dir $TARGET_DIR)"
    (cd "$REPO" && cargo build --release --bin portcullis --example bench_token --example bench_idp --quiet)
fi
TOKEN_BIN=$TARGET_DIR/release/examples/bench_token
IDP_BIN=$TARGET_DIR/release/examples/bench_idp
[[ -x $BIN ]] || {
    log "no binary at $BIN"
    exit 1
}

# --- configs -----------------------------------------------------------------------------
mkdir -p "$WORK/up" "$WORK/ng" "$WORK/pc" "$WORK/pr" "$WORK/redis"
ISSUER="http://$HOST:$UP_PORT"
DEV_ISSUER="http://$HOST:$IDP_PORT"
COOKIE_KEY=$(head -c 32 /dev/urandom | base64)
TOKEN=$("$TOKEN_BIN" "$ISSUER" "api://bench" "$WORK/up/jwks.json" RS256)
# nginx's workers run as an unprivileged user: they must be able to read the JWKS file.
chmod 755 "$WORK" "$WORK/up"
chmod 644 "$WORK/up/jwks.json"
cat >"$WORK/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $WORK/up/tmp;
    server {
        listen $HOST:$UP_PORT backlog=4096;
        default_type text/plain;
        location / { return 200 "hello from the upstream\n"; }
        location = /jwks { default_type application/json; alias $WORK/up/jwks.json; }
    }
}
EOF

ng_keepalive=$(((POOL + WORKERS - 1) / WORKERS))
cat >"$WORK/ng/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $WORK/ng/nginx.pid;
error_log $WORK/ng/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $WORK/ng/tmp;
    proxy_temp_path $WORK/ng/tmp;
    upstream backend {
        server $HOST:$UP_PORT;
        keepalive $ng_keepalive;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    server {
        listen $HOST:$NG_PORT backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same work Portcullis does: X-Forwarded-For/-Proto/-Host.
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
    }
}
EOF

cat >"$WORK/pc/portcullis.yaml" <<EOF
listeners:
  plain: { address: "$HOST:$PC_PORT" }
admin: { address: "$HOST:$ADMIN_PORT" }
log: { access: false, level: warn, format: json }
state_dir: $WORK/pc/state
upstreams:
  up:
    addresses: ["http://$HOST:$UP_PORT"]
    pool_max_idle: $POOL
issuers:
  bench:
    issuer: "$ISSUER"
    jwks_uri: "$ISSUER/jwks"
    audiences: ["api://bench"]
  dev:
    issuer: "$DEV_ISSUER"
    audiences: [portcullis-demo]
    client_id: portcullis-demo
sessions:
  cookie: { secure: false }
routes:
  - name: all
    path: /
    upstream: up
  - name: secure
    path: /secure
    upstream: up
    auth: bearer
    issuer: bench
    authorize: { scopes: ["api:read"] }
  - name: app
    path: /app
    upstream: up
    auth: session
    issuer: dev
EOF

# The Redis-store instance: the same routes, sessions in Redis.
sed -e "s/$HOST:$PC_PORT/$HOST:$PR_PORT/" -e "s/$HOST:$ADMIN_PORT/$HOST:$PR_ADMIN_PORT/" \
    -e "s#$WORK/pc/state#$WORK/pr/state#" \
    -e "s#^sessions:#sessions:\n  store: redis\n  redis: { url: \"redis+unix://$WORK/redis/r.sock\", timeout: 250ms }#" \
    -e "s#cookie: { secure: false }#cookie: { secure: false, keys: [\"$COOKIE_KEY\"] }#" \
    "$WORK/pc/portcullis.yaml" >"$WORK/pr/portcullis.yaml"

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# --- processes ---------------------------------------------------------------------------
wait_port() {
    local port=$1 i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "nothing listens on $HOST:$port after 10 s"
    return 1
}

check_ok() {
    local port=$1 code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$HOST:$port$PATH_QUERY")
    [[ $code == 200 ]] || {
        log "GET http://$HOST:$port$PATH_QUERY answered $code"
        return 1
    }
}

mkdir -p "$WORK/up/tmp" "$WORK/ng/tmp"
redis-server --port 0 --unixsocket "$WORK/redis/r.sock" --unixsocketperm 700 --save "" \
    --appendonly no --dir "$WORK/redis" >"$WORK/redis/log" 2>&1 &
PIDS+=("$!")
"$IDP_BIN" "$HOST:$IDP_PORT" alice >"$WORK/idp.log" 2>&1 &
PIDS+=("$!")
wait_port "$IDP_PORT"
nginx -e "$WORK/up/error.log" -p "$WORK/up" -c "$WORK/up/nginx.conf" &
UP_PID=$!
PIDS+=("$UP_PID")
nginx -e "$WORK/ng/error.log" -p "$WORK/ng" -c "$WORK/ng/nginx.conf" &
NG_PID=$!
PIDS+=("$NG_PID")
TOKIO_WORKER_THREADS=$WORKERS "$BIN" run --config "$WORK/pc/portcullis.yaml" \
    >"$WORK/pc/stdout.log" 2>"$WORK/pc/stderr.log" &
PC_PID=$!
PIDS+=("$PC_PID")
TOKIO_WORKER_THREADS=$WORKERS "$BIN" run --config "$WORK/pr/portcullis.yaml" \
    >"$WORK/pr/stdout.log" 2>"$WORK/pr/stderr.log" &
PR_PID=$!
PIDS+=("$PR_PID")

for port in "$UP_PORT" "$PC_PORT" "$NG_PORT" "$PR_PORT"; do
    wait_port "$port"
    check_ok "$port"
done
# Portcullis is ready (keys fetched) before the bearer route is measured.
for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$ADMIN_PORT/readyz") == 200 ]] && break
    sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://$HOST:$PC_PORT$BEARER_PATH")
[[ $code == 200 ]] || {
    log "bearer route answered $code with a valid token"
    exit 1
}
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$PC_PORT$BEARER_PATH")
[[ $code == 401 ]] || {
    log "bearer route answered $code without a token (expected 401)"
    exit 1
}
# One browser signs in on each session instance (curl follows the code flow with a cookie
# jar); its session cookie is then sent with every request.
sign_in() {
    local port=$1 admin=$2 jar=$WORK/jar.$1 code i
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$admin/readyz") == 200 ]] && break
        sleep 0.1
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' -L --max-redirs 5 -c "$jar" -b "$jar" \
        -H 'Accept: text/html' "http://$HOST:$port/app/")
    [[ $code == 200 ]] || {
        log "sign-in on port $port ended with $code"
        exit 1
    }
    awk '$6 == "portcullis_session" { print $7 }' "$jar"
}
SESSION_COOKIE=$(sign_in "$PC_PORT" "$ADMIN_PORT")
SESSION_REDIS_COOKIE=$(sign_in "$PR_PORT" "$PR_ADMIN_PORT")
for pair in "$PC_PORT:$SESSION_COOKIE" "$PR_PORT:$SESSION_REDIS_COOKIE"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: portcullis_session=${pair#*:}" \
        "http://$HOST:${pair%%:*}$SESSION_PATH")
    [[ $code == 200 ]] || {
        log "session route on port ${pair%%:*} answered $code with the session cookie"
        exit 1
    }
done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$PC_PORT$SESSION_PATH")
[[ $code == 401 ]] || {
    log "session route answered $code without a cookie (expected 401)"
    exit 1
}

# pids whose CPU time counts for a target: the process and its direct children
pids_of() {
    local pid=$1 kids
    kids=$(pgrep -P "$pid" | tr '\n' ' ' || true)
    echo "$pid $kids"
}
# utime+stime (clock ticks) summed over the given pids
cpu_ticks() {
    local total=0 pid stat f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || continue
        # fields after "pid (comm) ": state is f[0], utime f[11], stime f[12]
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

pc_threads=$(cat /proc/"$PC_PID"/task/*/comm | awk '/^tokio-r/ { n++ } END { print n + 0 }')
ng_workers=$(pgrep -P "$NG_PID" | wc -l)
log "portcullis pid $PC_PID: $pc_threads tokio worker threads (TOKIO_WORKER_THREADS=$WORKERS)"
log "nginx proxy pid $NG_PID: $ng_workers processes under the master (worker_processes $WORKERS)"
log "upstream nginx pid $UP_PID: 1 worker"

# --- quiet machine -----------------------------------------------------------------------
busy() {
    local load rustc
    load=$(cut -d' ' -f1 /proc/loadavg)
    # Stopped (SIGSTOP) compilers use no CPU: count only the ones that can run.
    rustc=$(ps -C rustc -o stat= | grep -vc '^T' || true)
    printf 'load1=%s rustc=%s' "$load" "$rustc"
}
wait_quiet() {
    local waited=0 rustc
    while ((waited < QUIET_WAIT)); do
        rustc=$(ps -C rustc -o stat= | grep -vc '^T' || true)
        ((rustc == 0)) && return 0
        ((waited == 0)) && log "waiting for $rustc rustc process(es) to finish (at most ${QUIET_WAIT}s)"
        sleep 5
        waited=$((waited + 5))
    done
    log "machine still busy after ${QUIET_WAIT}s: $(busy); measuring anyway (flagged)"
}

# --- measurement -------------------------------------------------------------------------
port_of() {
    case $1 in
    upstream) echo "$UP_PORT" ;;
    portcullis | bearer | session) echo "$PC_PORT" ;;
    session_redis) echo "$PR_PORT" ;;
    nginx) echo "$NG_PORT" ;;
    esac
}
path_of() {
    case $1 in
    bearer) echo "$BEARER_PATH" ;;
    session | session_redis) echo "$SESSION_PATH" ;;
    *) echo "$PATH_QUERY" ;;
    esac
}
# wrk arguments that differ per target (the bearer target sends the token)
extra_of() {
    case $1 in
    bearer) printf '%s\n' -H "Authorization: Bearer $TOKEN" ;;
    session) printf '%s\n' -H "Cookie: portcullis_session=$SESSION_COOKIE" ;;
    session_redis) printf '%s\n' -H "Cookie: portcullis_session=$SESSION_REDIS_COOKIE" ;;
    esac
}
pid_of() {
    case $1 in
    upstream) echo "" ;;
    portcullis | bearer | session) echo "$PC_PID" ;;
    session_redis) echo "$PR_PID" ;;
    nginx) echo "$NG_PID" ;;
    esac
}

RESULTS_TSV=$WORK/results.tsv
printf 'conns\tround\ttarget\trps\tp50_ms\tp99_ms\tproxy_cpu_us_per_req\tupstream_cpu_us_per_req\terrors\tnon2xx\tload_before\tload_after\n' >"$RESULTS_TSV"

measure() {
    local target=$1 conns=$2 round=$3 port proxy_pid proxy_pids up_pids out res
    local p0 p1 u0 u1 requests dur_us p50 p99 errs non2xx rps pcpu ucpu before after
    local attempt url extra=()
    port=$(port_of "$target")
    url="http://$HOST:$port$(path_of "$target")"
    mapfile -t extra < <(extra_of "$target")
    proxy_pid=$(pid_of "$target")
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        wait_quiet
        # warm-up: opens connections and fills the proxies' pools
        wrk -t"$WRK_THREADS" -c"$conns" -d"${WARMUP}s" "${extra[@]}" "$url" >/dev/null
        read -r -a up_pids <<<"$(pids_of "$UP_PID")"
        proxy_pids=()
        if [[ -n $proxy_pid ]]; then
            read -r -a proxy_pids <<<"$(pids_of "$proxy_pid")"
        fi
        before=$(busy)
        p0=0
        if ((${#proxy_pids[@]})); then p0=$(cpu_ticks "${proxy_pids[@]}"); fi
        u0=$(cpu_ticks "${up_pids[@]}")
        out=$(wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" --latency -s "$WORK/report.lua" \
            "${extra[@]}" "$url")
        p1=0
        if ((${#proxy_pids[@]})); then p1=$(cpu_ticks "${proxy_pids[@]}"); fi
        u1=$(cpu_ticks "${up_pids[@]}")
        after=$(busy)
        printf '%s\n' "$out" >>"$WORK/wrk.log"
        if [[ $after == *"rustc=0" && $before == *"rustc=0" ]] || ((attempt == RETRIES)); then
            break
        fi
        log "$target at $conns connections: compiler ran during the measurement ($before / $after); measuring again"
    done
    res=$(grep '^RESULT' <<<"$out")
    read -r _ requests dur_us p50 p99 errs non2xx <<<"$res"
    rps=$(awk -v r="$requests" -v d="$dur_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    pcpu=-
    if [[ -n $proxy_pid ]]; then
        pcpu=$(awk -v t=$((p1 - p0)) -v hz="$CLK_TCK" -v r="$requests" \
            'BEGIN { printf "%.2f", t / hz / r * 1e6 }')
    fi
    ucpu=$(awk -v t=$((u1 - u0)) -v hz="$CLK_TCK" -v r="$requests" \
        'BEGIN { printf "%.2f", t / hz / r * 1e6 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "$round" "$target" "$rps" \
        "$(awk -v u="$p50" 'BEGIN { printf "%.3f", u / 1000 }')" \
        "$(awk -v u="$p99" 'BEGIN { printf "%.3f", u / 1000 }')" \
        "$pcpu" "$ucpu" "$errs" "$non2xx" "$before" "$after" >>"$RESULTS_TSV"
    log "$(tail -n1 "$RESULTS_TSV" | tr '\t' ' ')"
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
log "each measurement: ${WARMUP}s warm-up + ${DURATION}s, wrk -t$WRK_THREADS, $ROUNDS rounds, connections: $CONNS"
for conns in $CONNS; do
    for ((round = 1; round <= ROUNDS; round++)); do
        read -r -a order <<<"$TARGETS"
        if ((round % 2 == 0)); then
            # alternate the order between rounds
            for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
                t=${order[i]}
                order[i]=${order[j]}
                order[j]=$t
            done
        fi
        for target in "${order[@]}"; do
            measure "$target" "$conns" "$round"
        done
    done
done

# --- report ------------------------------------------------------------------------------
echo
echo "== per round =="
column -t -s $'\t' "$RESULTS_TSV" 2>/dev/null || cat "$RESULTS_TSV"
echo
echo "== medians over $ROUNDS rounds (${DURATION}s each, wrk -t$WRK_THREADS; proxies: $WORKERS workers) =="
awk -F'\t' '
function median(key, n, i, j, t, a) {
    n = cnt[key]
    for (i = 1; i <= n; i++) a[i] = val[key, i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function add(key, v) { cnt[key]++; val[key, cnt[key]] = v }
NR > 1 {
    k = $1 SUBSEP $3
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    add(k SUBSEP "rps", $4); add(k SUBSEP "p50", $5); add(k SUBSEP "p99", $6)
    if ($7 != "-") add(k SUBSEP "pcpu", $7)
    add(k SUBSEP "ucpu", $8)
    err[k] += $9 + $10
}
END {
    printf "%-6s %-14s %9s %9s %9s %14s %17s %7s\n", "conns", "target", "req/s", "p50_ms", "p99_ms", "proxy_cpu_us/req", "upstream_cpu_us/req", "errors"
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        rps[k] = median(k SUBSEP "rps"); p99[k] = median(k SUBSEP "p99")
        pc = (cnt[k SUBSEP "pcpu"] ? sprintf("%.2f", median(k SUBSEP "pcpu")) : "-")
        printf "%-6s %-14s %9.0f %9.3f %9.3f %14s %17.2f %7d\n", parts[1], parts[2], rps[k], median(k SUBSEP "p50"), p99[k], pc, median(k SUBSEP "ucpu"), err[k]
    }
    print ""
    print "== Portcullis / nginx (ratio of medians; targets: req/s >= 1.00, p99 <= 1.20) =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[2] != "portcullis") continue
        n = parts[1] SUBSEP "nginx"
        if (!(n in rps)) continue
        rr = rps[k] / rps[n]; pr = p99[k] / p99[n]
        printf "conns %-4s req/s ratio %.3f (%s)   p99 ratio %.3f (%s)\n", parts[1], rr, (rr >= 1.0 ? "met" : "missed"), pr, (pr <= 1.2 ? "met" : "missed")
    }
    print ""
    print "== Portcullis with bearer auth (targets: >= 0.95 x nginx req/s, >= 0.95 x Portcullis without auth) =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[2] != "bearer") continue
        n = parts[1] SUBSEP "nginx"; p = parts[1] SUBSEP "portcullis"
        if ((n in rps) && (p in rps)) {
            rn = rps[k] / rps[n]; rp = rps[k] / rps[p]
            printf "conns %-4s bearer/nginx %.3f (%s)   bearer/no-auth %.3f (%s)\n", parts[1], rn, (rn >= 0.95 ? "met" : "missed"), rp, (rp >= 0.95 ? "met" : "missed")
        }
    }
    print ""
    print "== Portcullis with a session cookie (targets: memory >= 0.95 x nginx req/s, Redis >= 0.90 x) =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[2] != "session" && parts[2] != "session_redis") continue
        n = parts[1] SUBSEP "nginx"; p = parts[1] SUBSEP "portcullis"
        goal = (parts[2] == "session") ? 0.95 : 0.90
        if ((n in rps) && (p in rps)) {
            rn = rps[k] / rps[n]; rp = rps[k] / rps[p]
            printf "conns %-4s %-13s /nginx %.3f (%s)   /no-auth %.3f\n", parts[1], parts[2], rn, (rn >= goal ? "met" : "missed"), rp
        }
    }
}' "$RESULTS_TSV"

if [[ -n ${RESULTS:-} ]]; then
    cp "$RESULTS_TSV" "$RESULTS"
    log "results written to $RESULTS"
fi
