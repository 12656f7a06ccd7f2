# Readiness (redis.mode: sentinel). `ready.sh redis`: this pod's Redis is the primary, or a
# replica whose link to the primary is up (its initial sync done); a replica still loading or
# cut off from the primary is not ready. `ready.sh sentinel`: the Sentinel answers PING.
. "$(dirname "$0")/lib.sh"

node_at "$ordinal"
case ${1:-redis} in
    sentinel)
        sentinel_cli -h 127.0.0.1 -p "$n_sport" PING | grep -q PONG
        ;;
    redis)
        info=$(data_cli -h 127.0.0.1 -p "$n_port" INFO replication)
        case $info in
            *role:master*) exit 0 ;;
            *master_link_status:up*) exit 0 ;;
        esac
        echo "neither the primary nor a replica in sync with it" >&2
        exit 1
        ;;
    *)
        echo "usage: ready.sh redis|sentinel" >&2
        exit 2
        ;;
esac
