# This pod's Sentinel (redis.mode: sentinel). Its configuration is written afresh at every start
# (Sentinel rewrites it as it learns, so it lives in a writable volume): it monitors the primary
# the other Sentinels name, or pod 0 when none names one (first boot). Hostnames, not IPs, are
# announced and resolved, so a pod whose IP changes is the same instance to the Sentinels.
# Arguments are passed on to redis-server --sentinel.
#
# More environment: SENTINEL_DIR (writable), SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS,
# SENTINEL_FAILOVER_TIMEOUT_MS, SENTINEL_PARALLEL_SYNCS.
. "$(dirname "$0")/lib.sh"

node_at "$ordinal"
self_host=$n_host
self_sport=$n_sport
named_primary || first_boot_primary

# With resolve-hostnames, Sentinel refuses a configuration whose primary does not resolve yet
# (its pod is still being created): give it up to a minute to answer.
_tries=0
until data_cli -h "$p_host" -p "$p_port" PING 2>/dev/null | grep -q PONG; do
    _tries=$((_tries + 1))
    [ "$_tries" -lt 60 ] || break
    sleep 1
done

conf="$SENTINEL_DIR/sentinel.conf"
# The same Sentinel ID across container restarts: the others do not count it twice.
myid=""
if [ -f "$conf" ]; then
    myid=$(sed -n 's/^sentinel myid //p' "$conf")
fi
umask 077
{
    echo "port $self_sport"
    echo "dir $SENTINEL_DIR"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $self_host"
    echo "sentinel announce-port $self_sport"
    if [ -n "$myid" ]; then
        echo "sentinel myid $myid"
    fi
    if [ -n "${SENTINEL_PASSWORD:-}" ]; then
        echo "requirepass $SENTINEL_PASSWORD"
        echo "sentinel sentinel-pass $SENTINEL_PASSWORD"
    else
        # No password: the NetworkPolicy is the fence, and protected mode would refuse peers.
        echo "protected-mode no"
    fi
    echo "sentinel monitor $SENTINEL_MASTER $p_host $p_port $SENTINEL_QUORUM"
    echo "sentinel auth-pass $SENTINEL_MASTER $REDIS_PASSWORD"
    echo "sentinel down-after-milliseconds $SENTINEL_MASTER $SENTINEL_DOWN_AFTER_MS"
    echo "sentinel failover-timeout $SENTINEL_MASTER $SENTINEL_FAILOVER_TIMEOUT_MS"
    echo "sentinel parallel-syncs $SENTINEL_MASTER $SENTINEL_PARALLEL_SYNCS"
} >"$conf.new"
mv "$conf.new" "$conf"
exec redis-server "$conf" --sentinel "$@"
