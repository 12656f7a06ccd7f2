# This pod's Redis (redis.mode: sentinel): the replica of whichever primary the Sentinels name,
# so a pod that restarts after a failover (pod 0 included) rejoins as a replica and never makes
# a second primary. Only when no Sentinel names one (the set's first boot) is pod 0 the primary
# and the others its replicas. Arguments are passed on to redis-server.
. "$(dirname "$0")/lib.sh"

node_at "$ordinal"
self_host=$n_host
self_port=$n_port
named_primary || first_boot_primary

# Named, but down in the Sentinels' eyes: this Redis was the primary and was away longer than
# down-after-milliseconds, so a failover may be about to promote a replica. Starting as the
# primary now would make two; wait for their verdict (a new primary, or this one back up
# because no replica could take over), at most a minute.
_tries=0
while [ "$p_host" = "$self_host" ] && [ "$p_port" = "$self_port" ] && named_primary_down; do
    _tries=$((_tries + 1))
    [ "$_tries" -le 60 ] || break
    echo "$POD_NAME: the Sentinels think this primary down; waiting for their failover" >&2
    sleep 1
    named_primary || first_boot_primary
done

if [ "$p_host" = "$self_host" ] && [ "$p_port" = "$self_port" ]; then
    echo "$POD_NAME: starting as the primary" >&2
else
    echo "$POD_NAME: starting as a replica of $p_host:$p_port" >&2
    set -- --replicaof "$p_host" "$p_port" "$@"
fi
# Replicas announce this pod's stable name, not its IP: a rescheduled pod keeps its identity
# for the Sentinels. masterauth: any pod may become a replica after a failover. The data
# directory is REDIS_DIR (the volume), not in redis.conf.
exec redis-server "$(dirname "$0")/redis.conf" --port "$self_port" --dir "$REDIS_DIR" \
    --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" \
    --replica-announce-ip "$self_host" --replica-announce-port "$self_port" "$@"
