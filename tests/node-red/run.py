"""The newcomer's path with a real Node-RED (issue #27): `vehicle2mqtt demo`, then the
shipped examples/node-red-flow.json imported through Node-RED's Admin API.

1. As shipped (no login): the embedded broker refuses it with CONNACK "not authorised"
   and the bridge logs the refusal with the peer, so the newcomer learns why.
2. With the login from state_dir/embedded_broker.json (what README "Node-RED" says to
   do): the flow shows the vehicle's state summary, and its "lock it" button ends
   `succeeded` on command/result.

Run by .ci/node-red-test with NODE_RED (the node-red executable) and VEHICLE2MQTT_BIN.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ["VEHICLE2MQTT_BIN"]
NODE_RED = os.environ["NODE_RED"]
FLOW = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "node-red-flow.json")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def until(what, check, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def deploy(admin, flow):
    req = urllib.request.Request(
        f"{admin}/flows", data=json.dumps(flow).encode(), method="POST",
        headers={"Content-Type": "application/json", "Node-RED-Deployment-Type": "full"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status in (200, 204), r.status


def main():
    work = tempfile.mkdtemp(prefix="v2m-node-red-")
    ports = {k: free_port() for k in ["mqtt", "xchanger", "iauto360", "push", "kingxun", "exlive"]}
    args = [BIN, "demo"] + [a for k, p in ports.items() for a in (f"--{k}-port", str(p))]
    bridge_log = os.path.join(work, "bridge.log")
    demo = subprocess.Popen(args, cwd=work, stdout=open(bridge_log, "w"), stderr=subprocess.STDOUT)
    PROCS.append(demo)
    wait_port(ports["mqtt"])
    # The demo keeps its state (and the broker's login) in a temporary folder of its pid.
    login_file = os.path.join(tempfile.gettempdir(), f"vehicle2mqtt-demo-{demo.pid}", "embedded_broker.json")
    login = json.loads(until("the embedded broker's login", lambda: read(login_file)))

    nr_port = free_port()
    nr_log = os.path.join(work, "node-red.log")
    PROCS.append(subprocess.Popen([NODE_RED, "-u", os.path.join(work, "nr"), "-p", str(nr_port)],
                                  stdout=open(nr_log, "w"), stderr=subprocess.STDOUT))
    admin = f"http://127.0.0.1:{nr_port}"
    until("Node-RED's Admin API", lambda: _ok(f"{admin}/flows"), 120)

    with open(FLOW) as f:
        flow = json.load(f)
    for node in flow:
        if node["type"] == "mqtt-broker":
            node["port"] = str(ports["mqtt"])
        if node["type"] == "debug":
            node["console"] = True  # the debug output in Node-RED's log, for this test

    # 1. As shipped: refused, and the bridge says so.
    deploy(admin, flow)
    until("the bridge logging the refused login",
          lambda: "embedded_broker_login_refused" in read(bridge_log), 60)
    print("flow as shipped: refused with a CONNACK, logged by the bridge", flush=True)

    # 2. With the login: the state summary, then a lock that succeeds.
    for node in flow:
        if node["type"] == "mqtt-broker":
            node["credentials"] = {"user": login["username"], "password": login["password"]}
    deploy(admin, flow)
    until("a state summary in Node-RED", lambda: "[debug:state]" in read(nr_log)
          and "| battery" in read(nr_log), 90)
    print("state summary shown", flush=True)
    req = urllib.request.Request(f"{admin}/inject/v2m_lock_button", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.status

    def succeeded():
        log = read(nr_log)
        at = log.find("[debug:result]")
        return at >= 0 and "succeeded" in log[at:] and "node-red-lock" in log[at:]
    until("the lock's result", succeeded, 60)
    print("lock it: succeeded", flush=True)


def _ok(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    code = 0
    try:
        main()
        print("Node-RED suite passed")
    except BaseException:  # noqa: BLE001 - report, clean up, fail
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for p in PROCS:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if code:
            for root, _, files in os.walk(tempfile.gettempdir()):
                for name in files:
                    if name.endswith(".log") and "v2m-node-red-" in root:
                        path = os.path.join(root, name)
                        print(f"---- {path}")
                        print(read(path)[-3000:])
    sys.exit(code)
