#!/usr/bin/env bash
# AEDES_DIR=DIR_WITH_NODE_MODULES bash tests/cluster/aedes-cluster.sh DIR HEARTBEAT_MS P1 P2 P3
# For docs/cluster-brokers.md only: redis-server on a free port + 3 aedes nodes
# (npm install aedes@1.2.0 mqemitter-redis@7.2.1 aedes-persistence-redis@11.2.2 in AEDES_DIR).
set -eu
: "${AEDES_DIR:?set AEDES_DIR to the folder holding node_modules/aedes}"
dir=$1; hb=$2; shift 2; mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
rp=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
redis-server --port $rp --bind 127.0.0.1 --save '' --appendonly no --dir $dir > $dir/redis.log 2>&1 &
echo $! > $dir/redis.pid
for i in $(seq 50); do redis-cli -p $rp ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
cat > "$AEDES_DIR/aedes-node.mjs" <<'JS'
// One aedes node: node aedes-node.mjs MQTT_PORT REDIS_PORT HEARTBEAT_MS
import { createServer } from 'node:net'
import { Aedes } from 'aedes'
import mqemitterRedis from 'mqemitter-redis'
import persistenceRedis from 'aedes-persistence-redis'
const [port, redisPort, hb] = process.argv.slice(2).map(Number)
const mq = mqemitterRedis({ host: '127.0.0.1', port: redisPort })
const persistence = persistenceRedis({ host: '127.0.0.1', port: redisPort })
const broker = await Aedes.createBroker({ mq, persistence, heartbeatInterval: hb || 60000 })
createServer(broker.handle).listen(port, '127.0.0.1', () => console.log('aedes', broker.id, 'on', port, 'heartbeat', hb))
broker.on('clientError', (c, e) => console.log('clientError', c && c.id, e.message))
JS
n=1
for p in "$@"; do
  node "$AEDES_DIR/aedes-node.mjs" $p $rp $hb > $dir/n$n.log 2>&1 < /dev/null &
  echo $! > $dir/n$n.pid; n=$((n+1))
done
for p in "$@"; do
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.2; done
done
cat $dir/*.pid
