#!/usr/bin/env bash
# RMQTTD=/path/rmqttd bash tests/cluster/rmqtt-cluster.sh DIR P1 P2 P3: for docs/cluster-brokers.md only;
# 3 rmqttd (cluster-broadcast + retainer ram) nodes
set -eu
dir=$1; shift; mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
BIN=${RMQTTD:?set RMQTTD to an rmqttd built as docs/cluster-brokers.md says}
read -r r1 r2 r3 h1 h2 h3 < <(python3 -c 'import socket;ss=[socket.socket() for _ in range(6)];[s.bind(("127.0.0.1",0)) for s in ss];print(" ".join(str(s.getsockname()[1]) for s in ss))')
rpcs=($r1 $r2 $r3); https=($h1 $h2 $h3); ports=("$@")
for n in 1 2 3; do
  d=$dir/n$n; mkdir -p $d/plugins $d/log
  cat > $d/rmqtt.toml <<T
node.id = $n
rpc.server_addr = "127.0.0.1:${rpcs[$((n-1))]}"
rpc.server_workers = 2
rpc.client_timeout = "5s"
log.to = "file"
log.level = "info"
log.dir = "$d/log"
log.file = "rmqtt.log"
plugins.dir = "$d/plugins"
plugins.default_startups = ["rmqtt-retainer", "rmqtt-cluster-broadcast"]
listener.tcp.external.addr = "127.0.0.1:${ports[$((n-1))]}"
listener.tcp.external.workers = 2
listener.tcp.external.max_connections = 10000
listener.tcp.external.max_handshaking_limit = 500
listener.tcp.external.handshake_timeout = "30s"
listener.tcp.external.max_packet_size = "1m"
listener.tcp.external.backlog = 1024
listener.tcp.external.allow_anonymous = true
listener.tcp.external.min_keepalive = 0
listener.tcp.external.keepalive_backoff = 0.75
listener.tcp.external.max_inflight = 16
listener.tcp.external.max_mqueue_len = 1000
listener.tcp.external.mqueue_rate_limit = "1000,1s"
listener.tcp.external.max_clientid_len = 65535
listener.tcp.external.max_qos_allowed = 2
listener.tcp.external.max_topic_levels = 0
listener.tcp.external.retain_available = true
listener.tcp.external.session_expiry_interval = "5m"
listener.tcp.external.message_retry_interval = "20s"
listener.tcp.external.message_expiry_interval = "5m"
listener.tcp.external.max_subscriptions = 0
listener.tcp.external.shared_subscription = true
T
  cat > $d/plugins/rmqtt-cluster-broadcast.toml <<T
message_type = 98
node_grpc_addrs = ["1@127.0.0.1:$r1", "2@127.0.0.1:$r2", "3@127.0.0.1:$r3"]
node_grpc_circuit_breaker_enabled = true
node_grpc_circuit_failure_threshold = 10
node_grpc_circuit_reset_timeout = "15s"
node_grpc_circuit_half_open_success_threshold = 3
T
  cat > $d/plugins/rmqtt-retainer.toml <<T
storage.type = "ram"
max_retained_messages = 0
max_payload_size = "1MB"
retained_message_ttl = "0m"
T
  cat > $d/plugins/rmqtt-acl.toml <<'T'
rules = [["allow", "all"]]
T
done
for n in 1 2 3; do
  (cd $dir/n$n && exec $BIN -f $dir/n$n/rmqtt.toml > $dir/n$n/stdout.log 2>&1 < /dev/null) &
  echo $! > $dir/n$n.pid
done
for p in "${ports[@]}"; do
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.2; done
done
cat $dir/n*.pid
