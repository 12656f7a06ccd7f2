# Shared by start-redis.sh, start-sentinel.sh and ready.sh (redis.mode: sentinel): which pod this
# is, where its peers are, and which primary the Sentinels name. POSIX sh (busybox in the image).
#
# Environment (set by the StatefulSet):
#   POD_NAME         this pod's name; its ordinal is the number after the last "-"
#   REDIS_NODES      every pod's address in ordinal order, "host[:redis port[:sentinel port]]"
#                    (the chart gives stable DNS names through the headless Service)
#   REDIS_PORT, SENTINEL_PORT   the ports of an entry that names none
#   REDIS_PASSWORD, SENTINEL_PASSWORD (empty: the Sentinels ask for none), SENTINEL_MASTER
set -eu
set -f

ordinal=${POD_NAME##*-}
node_count=0
for _node in $REDIS_NODES; do node_count=$((node_count + 1)); done
if [ "$ordinal" -ge "$node_count" ]; then
    echo "$POD_NAME: ordinal $ordinal is not in REDIS_NODES ($node_count entries)" >&2
    exit 1
fi

# The other pods' ordinals: their Sentinels are asked before this pod's own.
_order=""
_i=0
while [ "$_i" -lt "$node_count" ]; do
    [ "$_i" -eq "$ordinal" ] || _order="$_order $_i"
    _i=$((_i + 1))
done

# node_at INDEX: sets n_host, n_port (Redis) and n_sport (Sentinel) of pod INDEX.
node_at() {
    _i=0
    for _node in $REDIS_NODES; do
        if [ "$_i" -eq "$1" ]; then
            n_host=${_node%%:*}
            _rest=${_node#"$n_host"}
            _rest=${_rest#:}
            n_port=${_rest%%:*}
            n_sport=${_rest#"$n_port"}
            n_sport=${n_sport#:}
            n_port=${n_port:-$REDIS_PORT}
            n_sport=${n_sport:-$SENTINEL_PORT}
            return 0
        fi
        _i=$((_i + 1))
    done
    return 1
}

# redis-cli with a password from the environment (never on the command line) and a deadline:
# a peer whose node is gone must not hang a start.
sentinel_cli() {
    if [ -n "${SENTINEL_PASSWORD:-}" ]; then
        REDISCLI_AUTH=$SENTINEL_PASSWORD timeout 3 redis-cli --raw "$@"
    else
        env -u REDISCLI_AUTH timeout 3 redis-cli --raw "$@"
    fi
}

data_cli() {
    REDISCLI_AUTH=$REDIS_PASSWORD timeout 3 redis-cli --raw "$@"
}

# named_primary: sets p_host and p_port to the primary the first answering Sentinel names, or
# fails when none does. The other pods' Sentinels are asked before this pod's own: a Sentinel
# restarted with this pod may have been configured from the first-boot default, theirs not.
named_primary() {
    for _i in $_order $ordinal; do
        node_at "$_i"
        _answer=$(sentinel_cli -h "$n_host" -p "$n_sport" \
            SENTINEL get-master-addr-by-name "$SENTINEL_MASTER" 2>/dev/null) || continue
        # shellcheck disable=SC2086
        set -- $_answer
        # Two words, the second a port: an error reply or "no such master" is not an answer.
        [ "$#" -eq 2 ] || continue
        case $2 in '' | *[!0-9]*) continue ;; esac
        p_host=$1
        p_port=$2
        echo "$POD_NAME: the Sentinel of pod $_i names $p_host:$p_port as primary" >&2
        return 0
    done
    return 1
}

# named_primary_down: any Sentinel thinks the primary down (subjectively, objectively, or is
# failing it over). Any, not the first: each flags it on its own clock, and a failover started
# by the first ones goes on even after the primary answers the others again.
named_primary_down() {
    for _i in $_order $ordinal; do
        node_at "$_i"
        _flags=$(sentinel_cli -h "$n_host" -p "$n_sport" SENTINEL master "$SENTINEL_MASTER" \
            2>/dev/null | awk 'previous == "flags" { print; exit } { previous = $0 }') || continue
        case $_flags in
            *s_down* | *o_down* | *failover_in_progress*) return 0 ;;
        esac
    done
    return 1
}

# first_boot_primary: no Sentinel knows a primary (the set's first start, or every Sentinel
# down at once): pod 0 is the primary.
first_boot_primary() {
    node_at 0
    p_host=$n_host
    p_port=$n_port
    echo "$POD_NAME: no Sentinel names a primary; pod 0 ($p_host:$p_port) is the primary" >&2
}
