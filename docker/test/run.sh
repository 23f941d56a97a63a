#!/usr/bin/env bash
# make docker-test: crawlguard's image built and run in a local Docker engine, then the compose
# stack (docker/test/test_stack.py). Needs root: it installs what is missing with apt-get
# (docker.io, docker-compose, debootstrap) and starts dockerd with --bridge=none
# --iptables=false (every build and container on the host's network, all traffic on 127.0.0.1).
# When no image registry is reachable, the base image and the Redis, PostgreSQL and Prometheus
# images are local stand-ins built from Debian (docker/test/*; never used by the real build).
#
# Exit status: 0 passed; 1 a build or a test failed (a product failure); 75 the machine cannot
# run it (not root, no apt-get, no Debian mirror or package index, dockerd does not start), so
# .ci/run can report a skip instead of a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
cache=${CRAWLGUARD_DOCKER_CACHE:-/var/cache/crawlguard-docker-test}
log_dir=${CRAWLGUARD_DOCKER_LOGS:-var/docker-test}
mkdir -p "$log_dir"
python=.venv/bin/python
say() { echo "docker-test: $*"; }
unavailable() { say "cannot run here: $*"; exit 75; }
failed() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || unavailable "needs root (apt-get, dockerd)"
[ -x "$python" ] || failed "no $python: run through make docker-test"
# One run at a time on a machine: they share the engine, the cache and the image names.
mkdir -p "$cache"
exec 9>"$cache/run.lock"
flock -w 1800 9 || unavailable "another make docker-test held $cache/run.lock for 30 minutes"

# -- the package index and Debian's mirror: both needed, neither is the product ---------------
reachable() { "$python" - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=15)
except Exception as e:
    sys.exit(f"{sys.argv[1]}: {e}")
PY
}
reachable https://pypi.org/simple/pip/ || unavailable "the package index is unreachable"
reachable "${DEBIAN_MIRROR:-http://deb.debian.org/debian}/dists/bookworm/Release" ||
    unavailable "Debian's mirror is unreachable"

# -- the engine --------------------------------------------------------------------------------
missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v docker-compose >/dev/null || missing="$missing docker-compose"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null || unavailable "no apt-get to install$missing"
    say "installing$missing"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >"$log_dir/apt.log" 2>&1 ||
      { apt-get update -q >>"$log_dir/apt.log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >>"$log_dir/apt.log" 2>&1; }; } ||
        unavailable "apt-get install$missing failed ($log_dir/apt.log)"
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd --bridge=none --iptables=false (log: $log_dir/dockerd.log)"
    # 9>&-: the engine outlives this run and must not inherit (so hold) the run lock
    nohup dockerd --bridge=none --iptables=false >"$log_dir/dockerd.log" 2>&1 9>&- &
    say "dockerd pid $!"
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$log_dir/dockerd.log"; unavailable "dockerd did not start"; }
fi

# -- the base image: pulled, or a stand-in under its name -------------------------------------
base=$(awk '$1 == "FROM" { print $2; exit }' docker/Dockerfile)
if docker image inspect "$base" >/dev/null 2>&1; then
    say "base image $base present ($(docker image inspect -f '{{index .Config.Labels "org.crawlguard.standin"}}' "$base" | sed 's/true/the local stand-in/;s/^$/pulled/'))"
elif timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
    say "pulled $base"
else
    say "no registry reachable: building the stand-in for $base (docker/test/standin-base.sh)"
    CRAWLGUARD_DOCKER_CACHE=$cache docker/test/standin-base.sh "$base" ||
        unavailable "the stand-in base image could not be built (Debian mirror, debootstrap)"
fi

# -- images ------------------------------------------------------------------------------------
build() {  # build LOG ARGS...: quiet unless it fails
    local log=$1; shift
    docker build --network host "$@" >"$log_dir/$log" 2>&1 || { tail -40 "$log_dir/$log"; return 1; }
}
for service in redis postgres prometheus; do
    say "stand-in image for compose's $service (docker/test/$service.Dockerfile)"
    build "standin-$service.log" --build-arg "BASE=$base" -f "docker/test/$service.Dockerfile" \
        -t "crawlguard-standin/$service:test" docker/test ||
        failed "the $service stand-in did not build ($log_dir/standin-$service.log)"
done
image=$("$python" -c 'import yaml; print(yaml.safe_load(open("docker/compose.yaml"))["services"]["crawlguard"]["image"])')
say "building $image (docker/Dockerfile, from requirements/runtime.txt)"
t0=$(date +%s)
build crawlguard-build.log -f docker/Dockerfile -t "$image" . ||
    failed "docker build of $image ($log_dir/crawlguard-build.log)"
say "built $image in $(( $(date +%s) - t0 )) s"

# -- the tests ---------------------------------------------------------------------------------
status=0
CRAWLGUARD_DOCKER_TEST=1 CG_IMAGE=$image "$python" -m pytest -q -p no:cacheprovider \
    --timeout 600 docker/test/test_stack.py || status=$?
say "took $(( $(date +%s) - started )) s"
[ "$status" = 0 ] || failed "docker/test/test_stack.py (exit $status)"
say "passed"
