#!/usr/bin/env bash
# taskgate's rate limit against a real one: nginx's limit_req.
#
# For each case (200/s and 1 000/s, each with a burst of 1 and of n/100), starts
# nginx on 127.0.0.1 (a free port, a temporary prefix, not as a daemon) with
#   limit_req_zone $server_name zone=z:1m rate=<n>r/s;
#   limit_req zone=z burst=<b-1> nodelay; limit_req_status 429;
# (for b = 1 without `burst=`, since nginx refuses burst=0: its default is none)
# and runs examples/nginx_client.rs against it: a fixed number of GETs through a
# taskgate pool with rate_limit(Rate::per_second(n).burst(b)). Every 429 is a
# request nginx saw as faster than the rate. Prints one table row per case.
#
# Loopback only; bounded in requests (REQUESTS_SCALE seconds' worth per case,
# default 5) and time (each client run is killed after 60 s). nginx is stopped
# when the script exits, however it exits.
#
# Run from anywhere: examples/nginx/run.sh   (needs nginx: apt-get install nginx-light)
set -euo pipefail

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    echo "nginx is not installed: apt-get install nginx-light (then run this again)"
    exit 0
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
template="$here/nginx.conf.template"
scale=${REQUESTS_SCALE:-5}

prefix=$(mktemp -d "${TMPDIR:-/tmp}/taskgate-nginx.XXXXXX")
nginx_pid=""

stop_nginx() {
    if [[ -n "$nginx_pid" ]]; then
        kill -TERM "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
        nginx_pid=""
    fi
}
cleanup() {
    stop_nginx
    rm -rf "$prefix"
}
trap cleanup EXIT

# A free TCP port on the loopback interface.
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

# Temp paths inside the prefix, for the modules this nginx has (so that nothing
# is written under /var/lib/nginx, and no directive names a missing module).
temp_paths=""
nginx_build=$("$NGINX" -V 2>&1)
for m in client_body proxy fastcgi uwsgi scgi; do
    if [[ "$m" != client_body && "$nginx_build" == *"--without-http_${m}_module"* ]]; then
        continue
    fi
    mkdir -p "$prefix/temp/$m"
    temp_paths+="    ${m}_temp_path $prefix/temp/$m;"$'\n'
done
mkdir -p "$prefix/logs" "$prefix/empty"
# The worker may run as another user (nginx's default when started as root).
chmod -R a+rwX "$prefix"

# NGINX_CLIENT: a client binary built elsewhere (say, from another taskgate
# version) to run instead of building this checkout's.
if [[ -n "${NGINX_CLIENT:-}" ]]; then
    client=$NGINX_CLIENT
else
    echo "building the client (cargo build --release --example nginx_client)..."
    (cd "$repo" && cargo build --release --quiet --example nginx_client)
    client="$repo/target/release/examples/nginx_client"
fi

# start_nginx RATE NGINX_BURST: writes the config and starts nginx on a free port.
start_nginx() {
    local rate=$1 nginx_burst=$2 conf="$prefix/nginx.conf"
    port=$(free_port)
    local body
    body=$(<"$template")
    body=${body//@PREFIX@/$prefix}
    body=${body//@PORT@/$port}
    body=${body//@RATE@/$rate}
    body=${body//@NGINX_BURST@/$nginx_burst}
    # nginx refuses burst=0: no burst is the parameter left out.
    if ((nginx_burst > 0)); then
        body=${body//@BURST_ARG@/burst=$nginx_burst }
    else
        body=${body//@BURST_ARG@/}
    fi
    body=${body//@TEMP_PATHS@/$temp_paths}
    printf '%s\n' "$body" >"$conf"
    "$NGINX" -p "$prefix" -c "$conf" -e "$prefix/logs/error.log" &
    nginx_pid=$!
    # Up when it answers (a 200 or a 429); give up after 5 s.
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$nginx_pid" 2>/dev/null; then
            echo "nginx exited at start:" >&2
            cat "$prefix/logs/error.log" >&2 || true
            return 1
        fi
        sleep 0.05
    done
    echo "nginx did not listen on 127.0.0.1:$port within 5 s" >&2
    return 1
}

echo "$("$NGINX" -v 2>&1); client: taskgate pool, 64 workers, rate_limit(Rate::per_second(n).burst(b))"
echo "nginx: limit_req rate=<n>r/s burst=<b-1> nodelay, 429 above it; ${scale} s of requests per case"
echo
header=--header
for rate in 200 1000; do
    for burst in 1 $((rate / 100 > 1 ? rate / 100 : 1)); do
        start_nginx "$rate" "$((burst - 1))"
        # Let the first connection attempt above (not a request) settle, and
        # start the limit from a fresh state.
        sleep 0.2
        timeout 60 "$client" $header --url "http://127.0.0.1:$port/api" \
            --rate "$rate" --burst "$burst" --requests "$((rate * scale))"
        header=""
        stop_nginx
    done
done
echo
echo "start rate: requests after the burst ÷ (last start − first start); 200 per s: 200s ÷ (last answer − first start)"
