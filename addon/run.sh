#!/usr/bin/env bash
# Add-on entry point: take the broker from the Supervisor's MQTT service, keep state
# under /data, and let the bridge read the add-on options (/data/options.json) directly:
# they are nested exactly like the bridge's own config sections.
set -euo pipefail

mqtt_json=$(curl -fsS -H "Authorization: Bearer ${SUPERVISOR_TOKEN}" http://supervisor/services/mqtt)
host=$(jq -r '.data.host' <<<"$mqtt_json")
port=$(jq -r '.data.port' <<<"$mqtt_json")
ssl=$(jq -r '.data.ssl // false' <<<"$mqtt_json")
scheme=mqtt
[ "$ssl" = "true" ] && scheme=mqtts

export V2M_MQTT__URL="${scheme}://${host}:${port}"
export V2M_MQTT__USERNAME="$(jq -r '.data.username // ""' <<<"$mqtt_json")"
export V2M_MQTT__PASSWORD="$(jq -r '.data.password // ""' <<<"$mqtt_json")"
export V2M_MQTT__CLIENT_ID="vehicle2mqtt-addon"
export V2M_BRIDGE__STATE_DIR="/data/state"
export V2M_BRIDGE__LOG_FORMAT="text"

echo "vehicle2mqtt: broker ${scheme}://${host}:${port}, options from /data/options.json"
exec /usr/local/bin/vehicle2mqtt run --config /data/options.json
