#!/usr/bin/env bash
# Build Courier's images (Dockerfile targets `api` and `worker`) without a Docker engine or a
# registry, with buildah, into a storage of our own; `make images` and tests/deploy/test_images.py
# both call this, so the test proves the same build a developer runs.
#
#   deploy/images/build.sh [api] [worker]   build the named targets (default: both); idempotent
#   deploy/images/build.sh podman ARGS...    podman on that storage, set up to run containers here
#   deploy/images/build.sh storage-opts      the storage flags, one per line (for buildah/podman)
#   deploy/images/build.sh clean             remove the whole cache (storage, base images)
#
# No registry is needed: unless COURIER_IMAGES_BASE names a base image to use instead, the base
# is Debian bookworm bootstrapped from this machine's own apt mirror plus Debian's python3
# (Containerfile.python-base), cached in the storage. Cold: ~1 min; warm: seconds.
#
# Environment (all optional):
#   COURIER_IMAGES_CACHE    storage and cache directory        (/var/cache/courier-images)
#   COURIER_IMAGES_RUNROOT  runtime state, lost on reboot      (/run/courier-images)
#   COURIER_IMAGES_DRIVER   storage driver (overlay when the kernel has it, else vfs)
#   COURIER_IMAGES_BASE     BASE_IMAGE for the Dockerfile      (the local Debian python base)
#   COURIER_IMAGES_CA       CA bundle passed as the build secret `ca`, "" for none
#                           (PIP_CERT, else /etc/ssl/certs/ca-certificates.crt when present)
#   COURIER_IMAGES_TAG      tag of the built images            (latest)
#   COURIER_DEBIAN_MIRROR   mirror for debootstrap             (the first bookworm one in apt's sources)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/deploy/images"
CACHE=${COURIER_IMAGES_CACHE:-/var/cache/courier-images}
RUNROOT=${COURIER_IMAGES_RUNROOT:-/run/courier-images}
# overlay stores each layer once and copies nothing per container: several times faster and
# smaller than vfs (a full copy per layer and container), which is the fallback without it.
DRIVER=${COURIER_IMAGES_DRIVER:-$(grep -qw overlay /proc/filesystems 2>/dev/null && echo overlay || echo vfs)}
TAG=${COURIER_IMAGES_TAG:-latest}
SUITE=bookworm
DEBIAN_IMAGE=localhost/debian:$SUITE
PYTHON_BASE=localhost/courier-python-base:3.11
STORAGE=(--root "$CACHE/storage" --runroot "$RUNROOT" --storage-driver "$DRIVER")

log() { printf 'images: %s\n' "$*" >&2; }

install_tools() {
    local missing=()
    local tool
    for tool in buildah podman runc debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing ${missing[*]}: run as root, or apt-get install ${missing[*]}"
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        buildah podman runc debootstrap >/dev/null
}

# The mirror apt already uses here (deb822 .sources or one-line .list), so debootstrap works
# wherever apt does, with no mirror host written into the repository.
debian_mirror() {
    if [ -n "${COURIER_DEBIAN_MIRROR:-}" ]; then
        echo "$COURIER_DEBIAN_MIRROR"
        return
    fi
    local mirror
    mirror=$(
        {
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null
            echo
        } | awk -v suite="$SUITE" '
            function flush() {
                if (!found && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, " "); print u[1]; found = 1
                }
                types = ""; uris = ""; suites = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^Types:/  { sub(/^Types:[[:space:]]*/, "");  types = $0 }
            /^URIs:/   { sub(/^URIs:[[:space:]]*/, "");   uris = $0 }
            /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
            END { flush() }'
    )
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v suite="$SUITE" '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }')
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

has_image() { buildah "${STORAGE[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# Debian from debootstrap, imported once; the apt lists and .debs are left out of the import
# (the python base fetches fresh lists and drops them in the same layer).
ensure_debian_image() {
    has_image "$DEBIAN_IMAGE" && return 0
    local mirror rootfs="$CACHE/rootfs.tmp"
    mirror=$(debian_mirror)
    log "bootstrapping Debian $SUITE from $mirror"
    rm -rf "$rootfs"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    tar -C "$rootfs" --exclude=./var/lib/apt/lists/* --exclude=./var/cache/apt/* -c . |
        podman "${STORAGE[@]}" --tmpdir "$RUNROOT/libpod" import --quiet - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

ca_bundle() {
    if [ -n "${COURIER_IMAGES_CA+set}" ]; then
        echo "$COURIER_IMAGES_CA"
    elif [ -n "${PIP_CERT:-}" ]; then
        echo "$PIP_CERT"
    elif [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        echo /etc/ssl/certs/ca-certificates.crt
    fi
}

bud() {
    # --layers: unchanged steps are reused, which is what makes the warm path take seconds.
    # The build log goes to stderr, so stdout stays free for callers.
    buildah "${STORAGE[@]}" bud --layers --isolation chroot --network host "$@" >&2
}

build_targets() {
    local base=${COURIER_IMAGES_BASE:-}
    if [ -z "$base" ]; then
        ensure_debian_image
        log "python base $PYTHON_BASE"
        bud --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -f "$HERE/Containerfile.python-base" \
            -t "$PYTHON_BASE" "$HERE"
        base=$PYTHON_BASE
    fi
    local secret=() ca target
    ca=$(ca_bundle)
    [ -n "$ca" ] && secret=(--secret "id=ca,src=$ca")
    for target in "$@"; do
        log "target $target from $base"
        bud "${secret[@]}" --build-arg "BASE_IMAGE=$base" --target "$target" \
            -f "$ROOT/Dockerfile" -t "localhost/courier-$target:$TAG" "$ROOT"
    done
    buildah "${STORAGE[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' |
        grep -E "^localhost/courier-($(IFS='|'; echo "$*")):$TAG " >&2
}

# podman's defaults ask for more open files and processes than this kind of host allows
# ("error setting rlimit"), so containers get limits the host can grant; runc is the runtime
# installed above.
containers_conf() {
    local nofile nproc conf="$CACHE/containers.conf"
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
    printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
        "$nofile" "$nofile" "$nproc" "$nproc" >"$conf.$$"
    mv "$conf.$$" "$conf"
    echo "$conf"
}

mkdir -p "$CACHE" "$RUNROOT"
case "${1:-}" in
    storage-opts)
        printf '%s\n' "${STORAGE[@]}"
        ;;
    podman)
        shift
        install_tools
        CONTAINERS_CONF=$(containers_conf) exec podman "${STORAGE[@]}" --tmpdir "$RUNROOT/libpod" "$@"
        ;;
    clean)
        buildah "${STORAGE[@]}" rm --all >/dev/null 2>&1 || true
        # The overlay driver may leave its directory bind-mounted onto itself; deepest first.
        awk -v a="$CACHE/" -v b="$RUNROOT/" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' \
            /proc/mounts | sort -r | xargs -r -n1 umount
        rm -rf "$CACHE" "$RUNROOT"
        ;;
    "" | api | worker)
        [ $# -eq 0 ] && set -- api worker
        for target in "$@"; do
            case "$target" in
                api | worker) ;;
                *) log "unknown target $target (api, worker)"; exit 2 ;;
            esac
        done
        install_tools
        # One build at a time per cache: concurrent runs (make images beside the test) would
        # otherwise bootstrap into the same directory.
        exec 9>"$CACHE/lock"
        flock 9
        build_targets "$@"
        ;;
    *)
        log "usage: $0 [api] [worker] | podman ARGS... | storage-opts | clean"
        exit 2
        ;;
esac
