#!/usr/bin/env bash
# The Debian packages a make target needs beyond Python: installs the missing ones (one
# `apt-get update` at most) when run as root with apt, else names them with the command that
# installs them and exits 1. Silent when everything is present, so `make test` can call it
# every time.
#
#   deploy/local/system-deps.sh test    what the test suite runs (redis-server, Prometheus and
#                                       promtool, the image tools, iproute2 for ip/ss,
#                                       busybox: the chart's Redis scripts as in alpine)
#   deploy/local/system-deps.sh bench   what `make bench` adds (wrk, valgrind)
#
# A suite that skipped its image or Prometheus tests for want of a tool would not "pass": the
# Makefile calls this before pytest instead of letting tests skip.
set -euo pipefail

# command:package, one per tool the target runs.
case "${1:-test}" in
    test)
        tools=(redis-server:redis-server promtool:prometheus prometheus:prometheus
            buildah:buildah podman:podman runc:runc debootstrap:debootstrap
            ip:iproute2 ss:iproute2 busybox:busybox)
        ;;
    bench) tools=(wrk:wrk valgrind:valgrind) ;;
    *)
        echo "usage: $0 test|bench" >&2
        exit 2
        ;;
esac

missing=()
for entry in "${tools[@]}"; do
    command="${entry%%:*}" package="${entry##*:}"
    if ! command -v "$command" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $package "* ]]; then
        missing+=("$package")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Missing Debian packages: ${missing[*]}" >&2
    echo "Install them, then run make again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
