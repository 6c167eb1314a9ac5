#!/usr/bin/env python3
"""Measures a 3-node clustered MQTT broker on localhost for docs/cluster-brokers.md.

    python3 tests/cluster/measure_broker.py --ports P1 P2 P3 \
        --kill-node-cmd 'bash .ci/cluster-broker kill_node DIR 1' [--soak 120] [--json out.json]

Needs paho-mqtt 2.x. Node A = P1, B = P2, C = P3. Every wait is bounded; the broker-node
kill runs last (it is destructive). MQTT 3.1.1 unless the MQTT 5 probe says otherwise.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"
RUN = uuid.uuid4().hex[:8]


class Client:
    """A paho client with a loop thread, connect/subscribe/publish waits and a message log."""

    def __init__(self, port, cid=None, keepalive=30, will=None, proto=mqtt.MQTTv311, clean=True):
        self.cid = cid or f"m-{RUN}-{uuid.uuid4().hex[:6]}"
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=proto,
                             clean_session=clean if proto != mqtt.MQTTv5 else None)
        self.c.max_inflight_messages_set(100)
        self.c.max_queued_messages_set(0)
        self.cond = threading.Condition()
        self.msgs = []  # (t, topic, payload, retain)
        self.connack = None
        self.disconnects = []  # (t, reason)
        self.subacks = {}
        self.pubacks = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        if will:
            self.c.will_set(*will)
        self.port = port
        self.keepalive = keepalive

    def _on_connect(self, c, u, flags, rc, props):
        with self.cond:
            self.connack = (time.time(), rc)
            self.cond.notify_all()

    def _on_disconnect(self, c, u, flags, rc, props):
        with self.cond:
            self.disconnects.append((time.time(), str(rc)))
            self.cond.notify_all()

    def _on_message(self, c, u, m):
        with self.cond:
            self.msgs.append((time.time(), m.topic, m.payload, m.retain))
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props):
        with self.cond:
            self.subacks[mid] = (time.time(), [int(getattr(r, "value", r)) for r in rcs])
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, rc, props):
        with self.cond:
            self.pubacks[mid] = time.time()
            self.cond.notify_all()

    def wait(self, pred, timeout):
        end = time.time() + timeout
        with self.cond:
            while not pred():
                left = end - time.time()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def connect(self, timeout=15):
        t0 = time.time()
        self.c.connect(HOST, self.port, self.keepalive)
        self.c.loop_start()
        if not self.wait(lambda: self.connack is not None, timeout):
            raise RuntimeError(f"no CONNACK from {self.port}")
        if self.connack[1].is_failure:
            raise RuntimeError(f"CONNACK {self.connack[1]} from {self.port}")
        return self.connack[0] - t0

    def subscribe(self, topic, qos=1, timeout=30):
        t0 = time.time()
        rc, mid = self.c.subscribe(topic, qos)
        if not self.wait(lambda: mid in self.subacks, timeout):
            raise RuntimeError(f"no SUBACK for {topic} within {timeout} s")
        t, codes = self.subacks[mid]
        return t - t0, codes

    def publish(self, topic, payload, qos=1, retain=False, timeout=30):
        t0 = time.time()
        info = self.c.publish(topic, payload, qos, retain)
        if qos == 0:
            return 0.0
        if not self.wait(lambda: info.mid in self.pubacks, timeout):
            raise RuntimeError(f"no PUBACK for {topic} within {timeout} s")
        return self.pubacks[info.mid] - t0

    def got(self, topic, payload=None):
        return [m for m in self.msgs if m[1] == topic and (payload is None or m[2] == payload)]

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


def will_child(port, cid, topic, payload, keepalive):
    """A client process with a will that sleeps until killed."""
    c = Client(port, cid=cid, keepalive=keepalive, will=(topic, payload, 1, False))
    c.connect()
    print("connected", flush=True)
    time.sleep(3600)


def spawn_will_child(port, topic, payload, keepalive, cid=None):
    cid = cid or f"will-{RUN}-{uuid.uuid4().hex[:6]}"
    p = subprocess.Popen([sys.executable, __file__, "--will-child", str(port), cid, topic, payload,
                          str(keepalive)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "connected" not in line:
        p.kill()
        raise RuntimeError("will child did not connect")
    return p


def r(x, nd=3):
    return None if x is None else round(x, nd)


def t_retained(a, c_port, out):
    topic = f"m/{RUN}/retained"
    t_pub = time.time()
    a.publish(topic, b"ret-1", qos=1, retain=True)
    t_ack = time.time()
    # A fresh subscriber on C, again and again until it sees it (bounded by 20 s).
    first = None
    tries = 0
    while time.time() - t_ack < 20:
        tries += 1
        s = Client(c_port)
        s.connect()
        dt_sub, codes = s.subscribe(topic, 1)
        ok = s.wait(lambda: s.got(topic, b"ret-1"), 2)
        s.close()
        if ok:
            first = s.got(topic, b"ret-1")[0][0]
            break
    out["retained_A_to_new_sub_C"] = {
        "seen": first is not None, "s_from_puback": r(first - t_ack) if first else None,
        "puback_s": r(t_ack - t_pub), "subscriber_tries": tries}
    # Clearing a retained message crosses too?
    a.publish(topic, b"", qos=1, retain=True)
    time.sleep(1)
    s = Client(c_port)
    s.connect()
    s.subscribe(topic, 1)
    s.wait(lambda: s.got(topic), 2)
    out["retained_cleared_on_C_after_1s"] = not s.got(topic)
    s.close()
    print("retained:", out["retained_A_to_new_sub_C"], "cleared:", out["retained_cleared_on_C_after_1s"],
          flush=True)


def t_will_client_kill(a_port, c, keepalive, out):
    topic = f"m/{RUN}/will-client"
    c.subscribe(topic, 1)
    p = spawn_will_child(a_port, topic, "gone", keepalive)
    time.sleep(1)
    t_kill = time.time()
    p.send_signal(signal.SIGKILL)
    p.wait()
    ok = c.wait(lambda: c.got(topic, b"gone"), 60)
    out["will_client_kill9"] = {
        "keepalive_s": keepalive, "delivered_on_C": ok,
        "s_after_kill": r(c.got(topic, b"gone")[0][0] - t_kill) if ok else None,
        "copies": len(c.got(topic, b"gone"))}
    print("will after client kill -9:", out["will_client_kill9"], flush=True)
    # A silent client (SIGSTOP: the TCP stays open, no PINGREQ): the broker's keepalive timer.
    topic = f"m/{RUN}/will-silent"
    c.subscribe(topic, 1)
    p = spawn_will_child(a_port, topic, "silent", keepalive)
    time.sleep(1)
    t_stop = time.time()
    p.send_signal(signal.SIGSTOP)
    ok = c.wait(lambda: c.got(topic, b"silent"), keepalive * 3 + 30)
    p.send_signal(signal.SIGKILL)
    p.wait()
    out["will_client_sigstop"] = {
        "keepalive_s": keepalive, "delivered_on_C": ok,
        "s_after_stop": r(c.got(topic, b"silent")[0][0] - t_stop) if ok else None}
    print("will after client SIGSTOP:", out["will_client_sigstop"], flush=True)


def t_latency(a, a_port, c_port, out, n=2000):
    # SUBACK times: first subscribe on a fresh connection, then ten more on it.
    s = Client(c_port)
    out["connack_s"] = r(s.connect())
    subs = []
    for i in range(10):
        dt, codes = s.subscribe(f"m/{RUN}/lat/{i}", 1)
        subs.append(dt)
    dt_wild, codes = s.subscribe(f"m/{RUN}/lat/#", 1)
    out["suback_qos1_s"] = {"first": r(subs[0]), "median_of_10": r(statistics.median(subs)),
                            "max_of_10": r(max(subs)), "wildcard": r(dt_wild), "granted": codes}
    s0 = Client(c_port)
    s0.connect()
    dt0, codes0 = s0.subscribe(f"m/{RUN}/lat0/x", 0)
    out["suback_qos0_s"] = r(dt0)
    s0.close()
    # QoS 1 publish on A -> delivery on C, one at a time.
    topic = f"m/{RUN}/lat/one"
    lats, acks = [], []
    for i in range(50):
        pl = f"l{i}".encode()
        t0 = time.time()
        acks.append(a.publish(topic, pl, 1))
        if not s.wait(lambda: s.got(topic, pl), 10):
            lats.append(None)
            continue
        lats.append(s.got(topic, pl)[0][0] - t0)
    got = [x for x in lats if x is not None]
    out["qos1_A_to_C_latency_ms"] = {
        "median": r(statistics.median(got) * 1000, 1) if got else None,
        "p90": r(sorted(got)[int(len(got) * 0.9) - 1] * 1000, 1) if got else None,
        "max": r(max(got) * 1000, 1) if got else None, "lost_of_50": lats.count(None),
        "puback_median_ms": r(statistics.median(acks) * 1000, 1)}
    # Throughput: one connection on A publishes n QoS 1 messages (up to 100 in flight).
    topic = f"m/{RUN}/lat/tp"
    base = len(s.got(topic))
    t0 = time.time()
    infos = [a.c.publish(topic, f"t{i}".encode(), 1) for i in range(n)]
    mids = {i.mid for i in infos}
    ok = a.wait(lambda: mids <= a.pubacks.keys(), 120)
    t_acked = time.time()
    s.wait(lambda: len(s.got(topic)) - base >= n, 30)
    t_got = time.time()
    out["qos1_throughput_one_conn"] = {
        "msgs": n, "all_acked": ok, "puback_msgs_per_s": r(n / (t_acked - t0), 0),
        "delivered_on_C": len(s.got(topic)) - base, "delivered_msgs_per_s": r(n / (t_got - t0), 0)}
    # QoS 0 for comparison
    topic = f"m/{RUN}/lat/tp0"
    t0 = time.time()
    for i in range(n * 5):
        a.c.publish(topic, f"z{i}".encode(), 0)
    s.wait(lambda: len(s.got(topic)) >= n * 5, 30)
    out["qos0_throughput_one_conn"] = {"msgs": n * 5, "delivered_on_C": len(s.got(topic)),
                                       "msgs_per_s": r(len(s.got(topic)) / (time.time() - t0), 0)}
    s.close()
    print("connack:", out["connack_s"], "suback:", out["suback_qos1_s"], "qos0 suback:", out["suback_qos0_s"],
          flush=True)
    print("latency:", out["qos1_A_to_C_latency_ms"], flush=True)
    print("throughput:", out["qos1_throughput_one_conn"], out["qos0_throughput_one_conn"], flush=True)


def t_takeover(ports, out):
    cid = f"same-{RUN}"
    first = Client(ports[0], cid=cid)
    first.connect()
    time.sleep(0.5)
    second = Client(ports[1], cid=cid)
    dt = second.connect()
    ok = first.wait(lambda: first.disconnects, 10)
    res = {"second_connack_s": r(dt), "first_disconnected": ok,
           "first_cut_s_after_second_connack": r(first.disconnects[0][0] - second.connack[0]) if ok else None,
           "second_still_up_after_3s": None}
    # paho reconnects by itself only with loop_forever/reconnect_delay; loop_start does reconnect:
    # stop the first so the two do not fight, then check the second stays up.
    first.c.loop_stop()
    time.sleep(3)
    res["second_still_up_after_3s"] = not second.disconnects
    second.close()
    out["same_client_id_A_then_B"] = res
    print("takeover:", res, flush=True)


def t_mqtt5(ports, out):
    res = {}
    for name, port in zip("ABC", ports):
        c = Client(port, proto=mqtt.MQTTv5)
        try:
            c.connect(timeout=5)
            res[name] = "ok"
        except Exception as e:
            res[name] = f"refused: {e}"
        c.close()
        break
    out["mqtt5_connect"] = res
    print("mqtt5:", res, flush=True)


def t_soak(ports, seconds, out):
    """Clients on each node, idle plus 2 QoS 1 msg/s each way and a retained update every 5 s."""
    subs = [Client(p, keepalive=10) for p in ports]
    for s in subs:
        s.connect()
        s.subscribe(f"m/{RUN}/soak/#", 1)
    pubs = [Client(p, keepalive=10) for p in ports]
    for p in pubs:
        p.connect()
    errors = []
    sent = 0
    t_end = time.time() + seconds
    i = 0
    slow = []
    while time.time() < t_end:
        # first third idle, then traffic
        if time.time() > t_end - seconds * 2 / 3:
            for k, p in enumerate(pubs):
                try:
                    dt = p.publish(f"m/{RUN}/soak/{k}", f"s{i}".encode(), 1, retain=(i % 10 == 0), timeout=15)
                    if dt > 1:
                        slow.append(r(dt))
                    sent += 1
                except Exception as e:
                    errors.append(str(e))
        i += 1
        time.sleep(0.5)
    time.sleep(2)
    out["soak"] = {
        "seconds": seconds, "published": sent, "publish_errors": errors[:5], "pubacks_over_1s": slow[:10],
        "disconnects": sum(len(c.disconnects) for c in subs + pubs),
        "received_per_sub": [len(s.msgs) for s in subs]}
    for c in subs + pubs:
        c.close()
    print("soak:", out["soak"], flush=True)


def t_broker_kill(ports, kill_cmd, keepalive, out, wait_will):
    topic = f"m/{RUN}/will-broker"
    rtopic = f"m/{RUN}/retained-before-kill"
    a = Client(ports[0])
    a.connect()
    a.publish(rtopic, b"kept", 1, retain=True)
    a.close()
    b, c = Client(ports[1]), Client(ports[2])
    b.connect()
    c.connect()
    b.subscribe(topic, 1)
    c.subscribe(topic, 1)
    cid = f"will-{RUN}-dead"
    p = spawn_will_child(ports[0], topic, "node-gone", keepalive, cid=cid)
    time.sleep(2)
    t_kill = time.time()
    subprocess.run(kill_cmd, shell=True, check=True)
    ok = c.wait(lambda: c.got(topic, b"node-gone") and b.got(topic, b"node-gone"), wait_will)
    res = {"keepalive_s": keepalive, "waited_s": wait_will,
           "will_on_B_s": r(b.got(topic, b"node-gone")[0][0] - t_kill) if b.got(topic) else None,
           "will_on_C_s": r(c.got(topic, b"node-gone")[0][0] - t_kill) if c.got(topic) else None,
           "will_copies_B_C": [len(b.got(topic)), len(c.got(topic))]}
    p.kill()
    p.wait()
    time.sleep(2)
    res["will_copies_B_C_after_child_gone"] = [len(b.got(topic)), len(c.got(topic))]
    # The dead node's client comes back on B with the same client id (what a bridge does).
    t0 = time.time()
    tries, back = 0, None
    while time.time() - t0 < 60:
        tries += 1
        s = Client(ports[1], cid=cid)
        try:
            s.connect(timeout=10)
            back = time.time() - t0
            s.close()
            break
        except Exception:
            s.close()
            time.sleep(1)
    res["same_id_reconnect_on_B_s"] = r(back)
    res["same_id_reconnect_tries"] = tries
    for name, port in (("B", ports[1]), ("C", ports[2])):
        s = Client(port)
        try:
            s.connect()
            dt, codes = s.subscribe(rtopic, 1)
            s.wait(lambda: s.got(rtopic), 5)
            res[f"retained_on_{name}"] = bool(s.got(rtopic, b"kept"))
            res[f"suback_on_{name}_s"] = r(dt)
        except Exception as e:
            res[f"retained_on_{name}"] = f"error: {e}"
        s.close()
    # Publishing retained on B still works (JetStream needs a quorum: 2 of 3 still up)?
    try:
        s = Client(ports[1])
        s.connect()
        res["retained_publish_on_B_puback_s"] = r(s.publish(f"m/{RUN}/after-kill", b"x", 1, retain=True))
        s.close()
    except Exception as e:
        res["retained_publish_on_B_puback_s"] = f"error: {e}"
    b.close()
    c.close()
    out["broker_node_A_kill9"] = res
    print("broker kill:", res, flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--will-child":
        port, cid, topic, payload, ka = sys.argv[2:7]
        will_child(int(port), cid, topic, payload, int(ka))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", type=int, nargs=3, required=True)
    ap.add_argument("--kill-node-cmd", help="shell command that kill -9s the node on the first port")
    ap.add_argument("--keepalive", type=int, default=10)
    ap.add_argument("--soak", type=int, default=120)
    ap.add_argument("--wait-will", type=int, default=300, help="how long to wait for a dead node's wills")
    ap.add_argument("--only", default="retained,will,latency,takeover,mqtt5,soak,brokerkill")
    ap.add_argument("--json")
    args = ap.parse_args()
    only = set(args.only.split(","))
    out = {"run": RUN}
    a = Client(args.ports[0])
    a.connect()
    steps = [
        ("retained", lambda: t_retained(a, args.ports[2], out)),
        ("will", lambda: t_will_client_kill(args.ports[0], _connected(args.ports[2]), args.keepalive, out)),
        ("latency", lambda: t_latency(a, args.ports[0], args.ports[2], out)),
        ("takeover", lambda: t_takeover(args.ports, out)),
        ("mqtt5", lambda: t_mqtt5(args.ports, out)),
        ("soak", lambda: t_soak(args.ports, args.soak, out)),
    ]
    for name, fn in steps:
        if name in only:
            try:
                fn()
            except Exception as e:
                out[name + "_error"] = repr(e)
                print(name, "failed:", repr(e), flush=True)
    out["A_disconnects_during_run"] = len(a.disconnects)
    a.close()
    if "brokerkill" in only and args.kill_node_cmd:
        try:
            t_broker_kill(args.ports, args.kill_node_cmd, args.keepalive, out, args.wait_will)
        except Exception as e:
            out["brokerkill_error"] = repr(e)
            print("brokerkill failed:", repr(e), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    print(json.dumps(out, default=str))


def _connected(port):
    c = Client(port)
    c.connect()
    return c


if __name__ == "__main__":
    main()
