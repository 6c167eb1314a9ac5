"""The bridge against a real Home Assistant (2025.4.4) and a real mosquitto.

Run by `.ci/ha-test` (which makes the venv). Starts mosquitto with persistence, the fake
xchanger cloud and iauto360 platform, simulated kingxun scooters and an EXLIVE tracker
(all from the bridge binary's own `simulate`), the bridge, and Home Assistant; onboards
HA over REST, adds the MQTT integration, and asserts over HA's websocket API:
- every expected entity is in the registry, with the right domain, device class, unit;
- zero warnings/errors from homeassistant.components.mqtt in HA's log;
- a renamed entity keeps its id and name across a bridge restart while vehicles are
  silent, and no entity is removed;
- lock without a code and unlock with the PIN (a wrong PIN is refused); engine start
  with the PIN entered in the vehicle's "Command PIN" text;
- the device tracker keeps its position when its link drops, and `connected` goes off.

Every process it starts is killed at the end, whatever happens.
"""

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.pop("VEHICLE2MQTT_BIN", os.path.join(ROOT, "target", "debug", "vehicle2mqtt"))
# The bridge reads V2M_* variables as config: none of the caller's may leak into it.
for _key in [k for k in os.environ if k.startswith("V2M_")]:
    del os.environ[_key]
PIN = "2468"
BASE = "v2m"
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, args, log_dir, **kw):
    log = open(os.path.join(log_dir, f"{name}.log"), "ab")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=15):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def mosquitto_bin():
    for c in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto"):
        if os.path.exists(c):
            return c
    return "mosquitto"


class HA:
    def __init__(self, port, session):
        self.port, self.session, self.token, self.ws, self.next_id = port, session, None, None, 1
        self.url = f"http://127.0.0.1:{port}"

    async def onboard(self):
        client_id = self.url + "/"
        async with self.session.post(self.url + "/api/onboarding/users", json={
            "client_id": client_id, "name": "Test", "username": "test",
            "password": "test-password-1", "language": "en"}) as r:
            assert r.status == 200, await r.text()
            code = (await r.json())["auth_code"]
        async with self.session.post(self.url + "/auth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": client_id}) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["access_token"]
        self.ws = await self.session.ws_connect(self.url + "/api/websocket")
        assert (await self.ws.receive_json())["type"] == "auth_required"
        await self.ws.send_json({"type": "auth", "access_token": self.token})
        assert (await self.ws.receive_json())["type"] == "auth_ok"

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}

    async def rest(self, method, path, body=None):
        async with self.session.request(method, self.url + path, json=body, headers=self.headers()) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text.startswith(("{", "[")) else text)

    async def call(self, msg):
        msg = dict(msg, id=self.next_id)
        self.next_id += 1
        await self.ws.send_json(msg)
        while True:
            reply = await self.ws.receive_json()
            if reply.get("id") == msg["id"] and reply.get("type") == "result":
                return reply

    async def add_mqtt(self, port):
        status, flow = await self.rest("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        assert status == 200, flow
        for _ in range(5):
            if flow.get("type") == "create_entry":
                return
            if flow.get("type") == "menu":
                status, flow = await self.rest("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                                               {"next_step_id": "broker"})
                continue
            assert flow.get("type") == "form", flow
            status, flow = await self.rest("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                                           {"broker": "127.0.0.1", "port": port})
        assert flow.get("type") == "create_entry", flow

    async def registry(self):
        reply = await self.call({"type": "config/entity_registry/list"})
        assert reply["success"], reply
        return {e["entity_id"]: e for e in reply["result"] if e["platform"] == "mqtt"}

    async def state(self, entity_id):
        status, body = await self.rest("GET", f"/api/states/{entity_id}")
        return body if status == 200 else None

    async def service(self, domain, service, entity_id, **data):
        return await self.call({"type": "call_service", "domain": domain, "service": service,
                                "service_data": data, "target": {"entity_id": entity_id}})


async def until(what, check, timeout=60, every=0.5):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def mqtt_log_problems(log_path):
    """WARNING/ERROR lines of the MQTT integration, and entity removals."""
    problems = []
    with open(log_path, errors="replace") as f:
        for line in f:
            if "homeassistant.components.mqtt" in line and (" WARNING " in line or " ERROR " in line):
                problems.append(line.rstrip())
    return problems


def updates(log_path):
    """Discovery documents HA found changed (it compares the parsed payloads)."""
    with open(log_path, errors="replace") as f:
        return [l.rstrip() for l in f if "Updating component" in l]


# An EXLIVE terminal whose id has a Chinese plate character, a space and a dot: the
# bridge names it `ex` + its safe characters + the first 5 bytes of SHA-1 of the id
# (docs/mqtt-contract.md, "Vehicle ids"), worked out here independently.
PLATE_ID = "粤B 12.345"
PLATE_VEHICLE = "ex" + "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_"
                              for c in PLATE_ID) + "_" + hashlib.sha1(PLATE_ID.encode()).hexdigest()[:10]


class PlateTerminal:
    """A raw EXLIVE platform link reporting one vehicle with PLATE_ID every 5 s."""

    def __init__(self, port):
        self.port = port
        self.commands = []
        self.task = None

    async def run(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        def send(cmd, body):
            writer.write((json.dumps({"header": {"cmd": cmd}, "body": body}, ensure_ascii=False) + "\n").encode())
        send("1000", {"name": "fleet", "pass": "change-me", "ver": "", "type": "", "mode": ""})
        self.send = send
        async def report():
            while True:
                now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 8 * 3600))
                send("1007", {"id": PLATE_ID, "code": "粤B12345", "lat": "31.2304", "lng": "121.4737",
                              "veo": "12", "dir": "90", "gpstime": now, "av": "1", "alarm": "0"})
                await writer.drain()
                await asyncio.sleep(5)
        reporter = asyncio.ensure_future(report())
        buf = b""
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("header", {}).get("cmd") == "1012":
                        self.commands.append(msg["body"])
                        send("1013", {"terminalid": msg["body"]["terminalid"], "code": "", "data": "LAT:31.2"})
        finally:
            reporter.cancel()

    def start(self):
        self.task = asyncio.ensure_future(self.run())

    def stop(self):
        if self.task:
            self.task.cancel()
            self.writer.close()


def removals(log_path):
    with open(log_path, errors="replace") as f:
        return [l.rstrip() for l in f if "Removing component" in l or "Removing entity" in l]


WORK = tempfile.mkdtemp(prefix="v2m-ha-")


async def main():
    work = WORK
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    started = time.time()
    p = {k: free_port() for k in ("mqtt", "ha", "kx", "ex", "xc", "ia", "push")}

    # mosquitto with persistence, as the Mosquitto add-on runs it.
    conf = os.path.join(work, "mosquitto.conf")
    store = os.path.join(work, "mosquitto")
    os.makedirs(store)
    os.chmod(work, 0o755)
    os.chmod(store, 0o777)  # mosquitto started as root drops to its own user
    with open(conf, "w") as f:
        f.write(f"listener {p['mqtt']} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {store}/\nautosave_interval 1\n")
    start("mosquitto", [mosquitto_bin(), "-c", conf], logs)
    wait_port(p["mqtt"])

    # The upstreams: fake clouds and simulated devices, from the bridge binary.
    start("xchanger", [BIN, "simulate", "xchanger-cloud", "--listen", f"127.0.0.1:{p['xc']}",
                       "--app-key", "ha-suite-key"], logs)
    start("iauto360", [BIN, "simulate", "iauto360-platform", "--listen", f"127.0.0.1:{p['ia']}",
                       "--push-url", f"http://127.0.0.1:{p['push']}/iauto360/events"], logs)
    devices = subprocess.run([BIN, "simulate", "kingxun", "--devices", "1", "--key-seed", "7",
                              "--print-config"], capture_output=True, text=True, check=True).stdout
    state_dir = os.path.join(work, "state")
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(f"""[mqtt]
url = "mqtt://127.0.0.1:{p['mqtt']}"
base_topic = "{BASE}"
[bridge]
state_dir = "{state_dir}"
command_pin = "{PIN}"
command_timeout = "30s"
log_level = "info"
[kingxun]
enabled = true
listen = "127.0.0.1:{p['kx']}"
{devices}
[exlive]
enabled = true
listen = "127.0.0.1:{p['ex']}"
[[exlive.accounts]]
name = "fleet"
password = "change-me"
[[exlive.commands]]
name = "locate"
data = "WHERE#"
[xchanger]
enabled = true
base_url = "http://127.0.0.1:{p['xc']}"
auth_base_url = "http://127.0.0.1:{p['xc']}"
username = "driver@example.com"
password = "correct horse"
app_key = "ha-suite-key"
poll_interval = "10s"
[trips]
end_after = "10s"
[[zones]]
name = "depot"
latitude = 31.20
longitude = 121.40
radius_m = 3000.0
[iauto360]
enabled = true
base_url = "http://127.0.0.1:{p['ia']}"
open_id = "OPEN123"
secure_code = "SECRETcode"
push_listen = "127.0.0.1:{p['push']}"
poll_interval = "10s"
[[iauto360.devices]]
esn = "865432100012345"
name = "Family car"
""")
    bridge = start("bridge", [BIN, "--config", config, "run"], logs)
    wait_port(p["kx"])
    kx = start("kingxun-sim", [BIN, "simulate", "kingxun", "--server", f"127.0.0.1:{p['kx']}",
                               "--devices", "1", "--key-seed", "7", "--interval", "2s"], logs)
    ex = start("exlive-sim", [BIN, "simulate", "exlive", "--server", f"127.0.0.1:{p['ex']}",
                              "--links", "1", "--rate", "0.5", "--first-id", "7001"], logs)
    # A tracker that drives 556 m at 180 km/h and stops: one trip, the last-trip sensors.
    route = os.path.join(work, "route.json")
    with open(route, "w") as f:
        f.write("[[31.2, 121.4], [31.205, 121.4]]")
    start("exlive-route-sim", [BIN, "simulate", "exlive", "--server", f"127.0.0.1:{p['ex']}",
                               "--links", "1", "--rate", "1", "--first-id", "7101",
                               "--route", route, "--speed", "180"], logs)

    # Home Assistant, from scratch.
    ha_dir = os.path.join(work, "ha")
    os.makedirs(ha_dir)
    with open(os.path.join(ha_dir, "configuration.yaml"), "w") as f:
        f.write(f"""homeassistant:
  name: vehicle2mqtt suite
  latitude: 31.2304
  longitude: 121.4737
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: CN
  currency: CNY
http:
  server_host: 127.0.0.1
  server_port: {p['ha']}
api:
config:
onboarding:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
    homeassistant.helpers.entity_registry: info
""")
    ha_log = os.path.join(ha_dir, "home-assistant.log")
    hass = start("hass", [sys.executable, "-m", "homeassistant", "-c", ha_dir, "--log-file", ha_log], logs)
    wait_port(p["ha"], 300)
    print(f"home assistant up after {time.time() - started:.0f} s", flush=True)

    async with aiohttp.ClientSession() as session:
        ha = HA(p["ha"], session)
        await until("onboarding API", lambda: _ok(session, ha.url + "/api/onboarding"), 120)
        await ha.onboard()
        await ha.add_mqtt(p["mqtt"])

        plate = PlateTerminal(p["ex"])
        plate.start()
        kx_lock = "lock.sim_scooter_1001_lock"
        kx_battery = "sensor.sim_scooter_1001_battery_level"
        kx_tracker = "device_tracker.sim_scooter_1001_location"
        ia_lock = "lock.family_car_lock"
        expected = {
            kx_lock: (None, None),
            kx_battery: ("battery", "%"),
            kx_tracker: (None, None),
            "binary_sensor.sim_scooter_1001_connected": ("connectivity", None),
            "select.sim_scooter_1001_guard_power": (None, None),
            "number.sim_scooter_1001_max_speed": ("speed", "km/h"),
            "event.sim_scooter_1001_events": (None, None),
            "sensor.sim_scooter_1001_odometer": ("distance", "km"),
            "device_tracker.ex7001_location": (None, None),
            "button.ex7001_cmd_locate": (None, None),
            # What the bridge works out (issue #26): the zone the tracker is in.
            "sensor.ex7001_zone": (None, None),
            "event.ex7001_events": (None, None),
            # The trip the route tracker drove, worked out by the bridge.
            "sensor.ex7101_last_trip_distance": ("distance", "km"),
            "sensor.ex7101_last_trip_duration": ("duration", "min"),
            "sensor.ex7101_last_trip_max_speed": ("speed", "km/h"),
            "sensor.ex7101_last_trip_avg_speed": ("speed", "km/h"),
            "sensor.ex7101_last_trip_start": ("timestamp", None),
            "sensor.ex7101_last_trip_end": ("timestamp", None),
            f"device_tracker.{PLATE_VEHICLE.lower()}_location": (None, None),
            ia_lock: (None, None),
            "device_tracker.family_car_location": (None, None),
            f"sensor.{BASE}_bridge_pin_failures": (None, None),
            f"button.{BASE}_bridge_purge": (None, None),
        }

        async def xchanger_lock():
            reg = await ha.registry()
            return next((e for e in reg if e.startswith("lock.") and e not in (kx_lock, ia_lock)), None)
        xc_lock = await until("the xchanger car's lock", xchanger_lock, 120)
        prefix = xc_lock[len("lock."):-len("_lock")]
        xc_engine, xc_pin = f"switch.{prefix}_engine", f"text.{prefix}_pin"
        expected[xc_engine] = (None, None)
        expected[xc_pin] = (None, None)
        expected[f"sensor.{prefix}_odometer"] = ("distance", "km")
        # Owner controls (issue #25): Refresh, polling and what the schedule does.
        expected[f"button.{prefix}_refresh"] = (None, None)
        expected[f"switch.{prefix}_polling"] = (None, None)
        expected[f"number.{prefix}_poll_interval"] = ("duration", "min")
        expected[f"number.{prefix}_poll_interval_active"] = ("duration", "min")
        expected[f"sensor.{prefix}_polling_phase"] = ("enum", None)
        expected[f"sensor.{prefix}_next_poll"] = ("timestamp", None)

        async def all_there():
            reg = await ha.registry()
            return reg if all(e in reg for e in expected) else None
        try:
            reg = await until("every expected entity", all_there, 120)
        except AssertionError:
            reg = await ha.registry()
            raise AssertionError(f"missing: {[e for e in expected if e not in reg]}")
        print(f"{len(reg)} MQTT entities in the registry", flush=True)
        for entity, (device_class, unit) in expected.items():
            st = await until(f"{entity} state", lambda: ha.state(entity), 30)
            attrs = st["attributes"]
            assert attrs.get("device_class") == device_class, (entity, attrs)
            assert attrs.get("unit_of_measurement") == unit, (entity, attrs)

        # The derived zone and the event entity's derived types.
        await until("the tracker in its zone", lambda: _state_in(ha, "sensor.ex7001_zone", ("depot",)), 60)
        types = (await ha.state("event.ex7001_events"))["attributes"].get("event_types", [])
        for t in ("trip", "zone_enter", "zone_exit", "overspeed", "charge_session"):
            assert t in types, (t, types)
        async def trip_km():
            st = await ha.state("sensor.ex7101_last_trip_distance")
            try:
                return float(st["state"]) if st else None
            except ValueError:  # "unavailable" until its state and availability arrive
                return None
        km = await until("the last trip's distance", trip_km, 30)
        assert abs(km - 0.556) <= 0.02 * 0.556, km
        print(f"zone sensor, derived event types and the last trip ({km} km) ok", flush=True)

        # Lock without a code; unlock with the PIN; a wrong PIN changes nothing.
        await until("kingxun lock state", lambda: _state_in(ha, kx_lock, ("locked", "unlocked")), 60)
        r = await ha.service("lock", "lock", kx_lock)
        assert r["success"], r
        await until("kingxun locked", lambda: _state_in(ha, kx_lock, ("locked",)), 30)
        result_entity = "event.sim_scooter_1001_command_result"
        await until("lock succeeded", lambda: _event(ha, result_entity, "succeeded", "lock"), 30)
        r = await ha.service("lock", "unlock", kx_lock, code="0000")
        assert r["success"], r
        result = await until("wrong PIN event", lambda: _event(ha, result_entity, "rejected", "unlock"), 30)
        assert result["attributes"].get("reason") == "wrong or missing PIN", result
        await asyncio.sleep(2)
        assert (await ha.state(kx_lock))["state"] == "locked", "a wrong PIN unlocked"
        r = await ha.service("lock", "unlock", kx_lock, code=PIN)
        assert r["success"], r
        await until("kingxun unlocked", lambda: _state_in(ha, kx_lock, ("unlocked",)), 30)
        await until("wrong PIN counted",
                            lambda: _state_in(ha, f"sensor.{BASE}_bridge_pin_failures", ("1",)), 20)
        print("lock/unlock with PIN ok", flush=True)

        # Engine start from the UI: PIN into the Command PIN text, then the switch.
        await until("xchanger engine state", lambda: _state_in(ha, xc_engine, ("off", "on")), 60)
        r = await ha.service("text", "set_value", xc_pin, value=PIN)
        assert r["success"], r
        pin_state = await ha.state(xc_pin)
        assert PIN not in json.dumps(pin_state), "the PIN shows in HA's state"
        r = await ha.service("switch", "turn_on", xc_engine)
        assert r["success"], r
        await until("engine running", lambda: _state_in(ha, xc_engine, ("on",)), 60)
        print("engine start with PIN ok", flush=True)

        # Refresh from HA: the button, then the car's fresh report answers it. Polling off
        # from HA shows in the phase sensor; on again, and the interval set from HA sticks.
        xc_result = f"event.{prefix}_command_result"
        r = await ha.service("button", "press", f"button.{prefix}_refresh")
        assert r["success"], r
        await until("refresh succeeded", lambda: _event(ha, xc_result, "succeeded", "refresh"), 60)
        r = await ha.service("switch", "turn_off", f"switch.{prefix}_polling")
        assert r["success"], r
        await until("polling off", lambda: _state_in(ha, f"sensor.{prefix}_polling_phase", ("off",)), 30)
        r = await ha.service("switch", "turn_on", f"switch.{prefix}_polling")
        assert r["success"], r
        await until("polling on", lambda: _state_in(ha, f"switch.{prefix}_polling", ("on",)), 30)
        r = await ha.service("number", "set_value", f"number.{prefix}_poll_interval", value=15)
        assert r["success"], r
        await until("poll interval 15", lambda: _state_in(ha, f"number.{prefix}_poll_interval", ("15", "15.0")), 30)
        print("refresh, polling switch and interval from HA ok", flush=True)

        # The Chinese-plate terminal's button sends its pass-through command, addressed to
        # the id the terminal sent, and its answer completes it.
        plate_button = f"button.{PLATE_VEHICLE.lower()}_cmd_locate"
        r = await ha.service("button", "press", plate_button)
        assert r["success"], r
        await until("the plate terminal's 1012", lambda: _true(plate.commands), 30)
        assert plate.commands[0]["terminalid"] == PLATE_ID, plate.commands
        await until("its result", lambda: _event(
            ha, f"event.{PLATE_VEHICLE.lower()}_command_result", "succeeded", "cmd_locate"), 30)
        print(f"EXLIVE terminal {PLATE_ID!r} is {PLATE_VEHICLE}: tracker, button, command ok", flush=True)

        # Rename the battery sensor as a user would.
        renamed = "sensor.my_scooter_battery"
        r = await ha.call({"type": "config/entity_registry/update", "entity_id": kx_battery,
                           "new_entity_id": renamed, "name": "My scooter battery", "icon": "mdi:scooter"})
        assert r["success"], r

        # The link drops: the tracker keeps its position, `connected` goes off.
        before = await until("tracker position", lambda: _has_position(ha, kx_tracker), 30)
        stop(kx)
        await until("connected off", lambda: _state_in(
            ha, "binary_sensor.sim_scooter_1001_connected", ("off",)), 60)
        after = await ha.state(kx_tracker)
        assert after["state"] != "unavailable", after
        assert after["attributes"].get("latitude") == before["attributes"]["latitude"], after
        assert (await ha.state(renamed))["state"] not in ("unavailable", "unknown")
        print("tracker keeps its position while the link is down", flush=True)

        # Bridge restart while every vehicle is silent (devices and clouds stopped).
        stop(ex)
        plate.stop()
        count_before = len(await ha.registry())
        updates_before = len(updates(ha_log))
        removals_before = len(removals(ha_log))
        stop(bridge)
        for proc in list(PROCS):
            if proc.args[1:3] in (["simulate", "xchanger-cloud"], ["simulate", "iauto360-platform"]):
                stop(proc)
        version = f"sensor.{BASE}_bridge_version"
        await until("bridge offline", lambda: _state_in(ha, version, ("unavailable",)), 30)
        bridge = start("bridge", [BIN, "--config", config, "run"], logs)
        await until("bridge online", lambda: _available(ha, version), 60)
        await asyncio.sleep(10)
        reg = await ha.registry()
        assert renamed in reg, "the renamed entity is gone"
        assert reg[renamed]["name"] == "My scooter battery", reg[renamed]
        assert kx_battery not in reg, "the old id came back"
        assert len(reg) == count_before, (count_before, len(reg))
        new_removals = removals(ha_log)[removals_before:]
        assert not new_removals, new_removals
        st = await ha.state(renamed)
        assert st["state"] not in ("unavailable", "unknown"), st
        tracker = await ha.state(kx_tracker)
        assert tracker["attributes"].get("latitude") == before["attributes"]["latitude"], tracker
        print(f"restart: {len(reg)} entities kept, 0 removed, rename kept", flush=True)

        # The devices and clouds come back: HA finds no document changed, from the
        # restart until every vehicle reports again.
        start("xchanger", [BIN, "simulate", "xchanger-cloud", "--listen", f"127.0.0.1:{p['xc']}",
                           "--app-key", "ha-suite-key"], logs)
        start("iauto360", [BIN, "simulate", "iauto360-platform", "--listen", f"127.0.0.1:{p['ia']}",
                           "--push-url", f"http://127.0.0.1:{p['push']}/iauto360/events"], logs)
        kx = start("kingxun-sim", [BIN, "simulate", "kingxun", "--server", f"127.0.0.1:{p['kx']}",
                                   "--devices", "1", "--key-seed", "7", "--interval", "2s"], logs)
        ex = start("exlive-sim", [BIN, "simulate", "exlive", "--server", f"127.0.0.1:{p['ex']}",
                                  "--links", "1", "--rate", "0.5", "--first-id", "7001"], logs)
        plate = PlateTerminal(p["ex"])
        plate.start()
        for entity in ("binary_sensor.sim_scooter_1001_connected",
                       "binary_sensor.ex7001_connected",
                       f"binary_sensor.{PLATE_VEHICLE.lower()}_connected"):
            await until(f"{entity} on again", lambda: _state_in(ha, entity, ("on",)), 90)
        await asyncio.sleep(15)
        changed = updates(ha_log)[updates_before:]
        assert not changed, "documents changed over a restart:\n" + "\n".join(changed)
        # The devices go quiet again: what HA's restart below brings back is this set.
        stop(kx)
        stop(ex)
        plate.stop()
        await asyncio.sleep(3)
        reg = await ha.registry()
        print(f"restart and relink: 0 changed discovery documents ('Updating component') "
              f"for {len(reg)} entities", flush=True)

        problems = mqtt_log_problems(ha_log)
        assert not problems, "\n".join(problems)
        entities = len(reg)

        # Home Assistant restarts: its birth message brings discovery back at once.
        await ha.ws.close()
        stop(hass)
        os.rename(ha_log, ha_log + ".first")
        hass = start("hass", [sys.executable, "-m", "homeassistant", "-c", ha_dir, "--log-file", ha_log], logs)
        wait_port(p["ha"], 300)
        ha.ws = await session.ws_connect(ha.url + "/api/websocket")
        assert (await ha.ws.receive_json())["type"] == "auth_required"
        await ha.ws.send_json({"type": "auth", "access_token": ha.token})
        assert (await ha.ws.receive_json())["type"] == "auth_ok"
        await until("renamed entity back", lambda: _available(ha, renamed), 60)
        await until("tracker back", lambda: _has_position(ha, kx_tracker), 60)
        await asyncio.sleep(5)
        reg = await ha.registry()
        assert len(reg) == entities and renamed in reg, (entities, len(reg))
        problems = mqtt_log_problems(ha_log) + removals(ha_log)
        assert not problems, "\n".join(problems)
        print(f"HA restart: {len(reg)} entities, renamed one kept", flush=True)
        print(f"HA log: 0 MQTT warnings or errors, 0 removals; {entities} entities", flush=True)

        await cluster_phase(ha, p["mqtt"], work, logs, ha_log)
        print(f"suite took {time.time() - started:.0f} s", flush=True)


def retained(port, topic, wait=3.0):
    """The retained payload on `topic` (b"" when none), read with paho-mqtt."""
    import paho.mqtt.client as mqtt
    got = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    end = time.time() + wait
    while not got and time.time() < end:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return got[-1] if got else b""


def owner(port, vehicle):
    raw = retained(port, f"{CLUSTER_BASE}/{vehicle}/owner")
    try:
        return json.loads(raw).get("instance") if raw else None
    except ValueError:
        return None


CLUSTER_BASE = "v2mc"


async def cluster_phase(ha, mqtt_port, work, logs, ha_log):
    """Two instances in cluster mode (docs/cluster.md) on another base topic: each its own
    device in HA under the cluster's; a scooter that moves from one to the other keeps
    every entity as it was (0 removed, 0 documents HA finds changed) and answers its
    lock at the new owner; the owner killed, its scooter shows disconnected."""
    devices = subprocess.run([BIN, "simulate", "kingxun", "--devices", "1", "--key-seed", "9",
                              "--first-id", "2001", "--print-config"],
                             capture_output=True, text=True, check=True).stdout
    ports, bridges = {}, {}
    for name in ("c1", "c2"):
        ports[name] = free_port()
        config = os.path.join(work, f"cluster-{name}.toml")
        with open(config, "w") as f:
            f.write(f"""[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
base_topic = "{CLUSTER_BASE}"
[bridge]
state_dir = "{os.path.join(work, 'state-' + name)}"
command_timeout = "20s"
[cluster]
instance_id = "{name}"
settle = "2s"
lease_ttl = "6s"
[kingxun]
enabled = true
listen = "127.0.0.1:{ports[name]}"
{devices}
""")
        bridges[name] = start(f"cluster-{name}", [BIN, "--config", config, "run"], logs)
        wait_port(ports[name])
    lock = "lock.sim_scooter_2001_lock"
    sim = start("cluster-sim", [BIN, "simulate", "kingxun", "--server", f"127.0.0.1:{ports['c1']}",
                                "--devices", "1", "--key-seed", "9", "--first-id", "2001",
                                "--interval", "2s"], logs)
    expected = [lock, "sensor.sim_scooter_2001_battery_level",
                f"sensor.{CLUSTER_BASE}_bridge_c1_version", f"sensor.{CLUSTER_BASE}_bridge_c2_links",
                f"button.{CLUSTER_BASE}_bridge_purge"]

    async def all_there():
        reg = await ha.registry()
        return reg if all(e in reg for e in expected) else None
    try:
        await until("the cluster's entities", all_there, 90)
    except AssertionError:
        reg = await ha.registry()
        raise AssertionError(f"missing: {[e for e in expected if e not in reg]}")
    await until("the scooter's lock", lambda: _state_in(ha, lock, ("locked", "unlocked")), 60)
    await until("owned by c1", lambda: _true(owner(mqtt_port, "kx2001") == "c1"), 30)
    devices_reply = await ha.call({"type": "config/device_registry/list"})
    by_id = {d["id"]: d for d in devices_reply["result"]}
    reg = await ha.registry()
    instance = by_id.get(reg[f"sensor.{CLUSTER_BASE}_bridge_c1_version"]["device_id"], {})
    scooter = by_id.get(reg[lock]["device_id"], {})
    cluster_device = by_id.get(instance.get("via_device_id"), {})
    assert instance.get("name") == "vehicle2mqtt c1", instance
    assert cluster_device.get("name") == "vehicle2mqtt bridge", cluster_device
    assert scooter.get("via_device_id") == cluster_device.get("id"), (scooter, cluster_device)
    await asyncio.sleep(5)
    count = len(await ha.registry())
    updates_before, removals_before = len(updates(ha_log)), len(removals(ha_log))

    # The scooter moves to c2.
    stop(sim)
    moved_at = time.time()
    sim = start("cluster-sim", [BIN, "simulate", "kingxun", "--server", f"127.0.0.1:{ports['c2']}",
                                "--devices", "1", "--key-seed", "9", "--first-id", "2001",
                                "--interval", "2s"], logs)
    await until("owned by c2", lambda: _true(owner(mqtt_port, "kx2001") == "c2"), 30)
    await until("the lock available at c2", lambda: _state_in(ha, lock, ("locked", "unlocked")), 30)
    r = await ha.service("lock", "lock", lock)
    assert r["success"], r
    await until("locked through c2", lambda: _event(
        ha, "event.sim_scooter_2001_command_result", "succeeded", "lock"), 30)
    print(f"cluster: the scooter moved to c2 and locked through it, "
          f"{time.time() - moved_at:.1f} s after its link moved", flush=True)
    await asyncio.sleep(10)
    changed = updates(ha_log)[updates_before:]
    gone = removals(ha_log)[removals_before:]
    assert not changed, "documents changed at a takeover:\n" + "\n".join(changed)
    assert not gone, gone
    assert len(await ha.registry()) == count

    # Its owner dies: the scooter shows unavailable (its home marks it offline).
    killed_at = time.time()
    stop(bridges["c2"], signal.SIGKILL)
    stop(sim)
    # Controls keep their last value; `connected` and the live readings follow the link.
    connected = "binary_sensor.sim_scooter_2001_connected"
    await until("the scooter disconnected", lambda: _state_in(ha, connected, ("off",)), 30)
    await until("its speed unavailable", lambda: _state_in(
        ha, "sensor.sim_scooter_2001_speed", ("unavailable",)), 30)
    print(f"cluster: owner killed, the scooter disconnected in HA after "
          f"{time.time() - killed_at:.1f} s", flush=True)
    assert not removals(ha_log)[removals_before:]
    assert not updates(ha_log)[updates_before:]
    problems = mqtt_log_problems(ha_log)
    assert not problems, "\n".join(problems)
    print(f"cluster: {count} entities, 0 removed, 0 changed documents ('Updating component') "
          f"at the takeover and the kill", flush=True)


async def _true(value):
    return value


async def _available(ha, entity):
    st = await ha.state(entity)
    return st if st and st["state"] not in ("unavailable", "unknown") else None


async def _ok(session, url):
    try:
        async with session.get(url) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def _state_in(ha, entity, states):
    st = await ha.state(entity)
    return st if st and st["state"] in states else None


async def _event(ha, entity, event_type, command):
    st = await ha.state(entity)
    a = st["attributes"] if st else {}
    return st if a.get("event_type") == event_type and a.get("command") == command else None


async def _has_position(ha, entity):
    st = await ha.state(entity)
    return st if st and st["attributes"].get("latitude") is not None else None


if __name__ == "__main__":
    code = 0
    try:
        asyncio.run(main())
        print("HA suite passed")
    except BaseException as e:  # noqa: BLE001 - report, clean up, fail
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for proc in PROCS:
            stop(proc, wait=10)
        if code:
            # The tails of the logs, for whoever reads CI.
            for root, _, files in os.walk(WORK):
                for name in files:
                    if name.endswith(".log"):
                        path = os.path.join(root, name)
                        with open(path, errors="replace") as f:
                            tail = f.readlines()[-25:]
                        print(f"---- {path} (last {len(tail)} lines)")
                        print("".join(tail))
    sys.exit(code)
