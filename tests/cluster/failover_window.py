#!/usr/bin/env python3
"""How long a clustered broker stalls after one node is killed.

    python3 tests/cluster/failover_window.py --ports P1 P2 P3 --kill-node-cmd 'CMD' [--rounds 3]

CMD kills the node on P1. Before the kill a client on P2 publishes QoS 1 every 0.1 s
(PUBACK times logged, kept 25 s after the kill); after it, new connections on P2 and P3 try CONNECT + a retained
QoS 1 PUBLISH + a QoS 1 SUBSCRIBE, each attempt bounded by 3 s, until one works (60 s at
most). Prints the seconds from the kill to the first working attempt and the longest
PUBACK wait of the existing connection. Needs paho-mqtt 2.x.
"""
import argparse
import json
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"


def attempt(port, topic, timeout=3.0):
    """CONNECT, retained QoS 1 PUBLISH, QoS 1 SUBSCRIBE on a fresh connection; True if all answered."""
    done = threading.Event()
    state = {"connack": False, "puback": False, "suback": False}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fw-{uuid.uuid4().hex[:10]}",
                    protocol=mqtt.MQTTv311)

    def on_connect(cl, u, f, rc, p):
        if not rc.is_failure:
            state["connack"] = True
            cl.publish(topic, b"x", 1, True)
            cl.subscribe(topic + "/sub", 1)

    def on_publish(cl, u, mid, rc, p):
        state["puback"] = True
        if state["suback"]:
            done.set()

    def on_subscribe(cl, u, mid, rcs, p):
        if all(int(getattr(x, "value", x)) < 0x80 for x in rcs):
            state["suback"] = True
        if state["puback"]:
            done.set()

    c.on_connect, c.on_publish, c.on_subscribe = on_connect, on_publish, on_subscribe
    try:
        c.connect(HOST, port, 10)
    except OSError:
        return False, state
    c.loop_start()
    ok = done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return ok, state


def one_round(ports, kill_cmd, restart_cmd):
    run = uuid.uuid4().hex[:6]
    # an existing connection on B that keeps publishing through the kill
    acks = []
    stop = threading.Event()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fw-pub-{run}", protocol=mqtt.MQTTv311)
    sent = {}
    pub.on_publish = lambda cl, u, mid, rc, p: acks.append((sent.get(mid), time.time()))
    disc = []
    pub.on_disconnect = lambda cl, u, f, rc, p: disc.append(time.time())
    pub.connect(HOST, ports[1], 10)
    pub.loop_start()

    def publisher():
        while not stop.is_set():
            info = pub.publish(f"fw/{run}/steady", b"s", 1)
            sent[info.mid] = time.time()
            time.sleep(0.1)

    th = threading.Thread(target=publisher)
    th.start()
    time.sleep(2)
    t_kill = time.time()
    subprocess.run(kill_cmd, shell=True, check=True)
    first = {}
    tries = 0
    while time.time() - t_kill < 60 and len(first) < 2:
        for name, port in (("B", ports[1]), ("C", ports[2])):
            if name in first:
                continue
            tries += 1
            ok, st = attempt(port, f"fw/{run}/{name}")
            if ok:
                first[name] = round(time.time() - t_kill, 2)
    while time.time() < t_kill + 25:
        time.sleep(0.2)
    stop.set()
    th.join()
    t_end = time.time()
    time.sleep(1)
    n_disc = len(disc)
    pub.disconnect()
    pub.loop_stop()
    waits = [a - s for s, a in acks if s]
    # the longest stretch without a PUBACK from 1 s before the kill to the end
    arr = sorted([t_kill - 1] + [a for s, a in acks if a >= t_kill - 1] + [t_end])
    gap = max(b - a for a, b in zip(arr, arr[1:]))
    res = {"first_working_new_connection_s": first, "attempts": tries,
           "existing_conn_longest_puback_gap_s": round(gap, 2),
           "existing_conn_sent": len(sent), "existing_conn_unacked": len(sent) - len(acks),
           "existing_conn_disconnects": n_disc,
           "max_puback_wait_s": round(max(waits), 2) if waits else None}
    if restart_cmd:
        subprocess.run(restart_cmd, shell=True, check=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", type=int, nargs=3, required=True)
    ap.add_argument("--kill-node-cmd", required=True)
    ap.add_argument("--restart-node-cmd", help="brings node A back between rounds")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    out = []
    for i in range(args.rounds):
        res = one_round(args.ports, args.kill_node_cmd,
                        args.restart_node_cmd if i < args.rounds - 1 else None)
        print(f"round {i + 1}:", json.dumps(res), flush=True)
        out.append(res)
        time.sleep(3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
