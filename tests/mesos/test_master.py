#!/usr/bin/env python3
"""A loopback Mesos master for spate's tests (python3 standard library only).

Mesos is retired and not packaged, so tests/launcher/test_mesos.c runs this
instead. It speaks the subset of the v1 scheduler HTTP API that spate uses,
as Mesos does (src/master/http.cpp, validation.cpp, the scheduler docs):

- POST /api/v1/scheduler with JSON; a master that is not the leader answers
  307 with a scheme-relative Location ("//127.0.0.1:PORT/api/v1/scheduler").
- SUBSCRIBE answers 200 with a Mesos-Stream-Id header and keeps the response
  open: RecordIO events ("<length>\\n<json>") cut into HTTP chunks at random
  places (a record often spans chunks, a chunk often holds several), a
  HEARTBEAT every heartbeat_interval_seconds.
- Every other call must carry the framework id and the stream id: 403 before
  subscribing, 400 for a missing or wrong stream id, 202 when accepted.
- Offers come from scripted agents (cpus/mem/ports resources with role and
  reservations as given, attributes), with allocation_info for MULTI_ROLE
  frameworks, one outstanding offer per agent; DECLINE and ACCEPT filters
  (refuse_seconds, default 5) hold an agent's unchanged resources back;
  SUPPRESS stops offers, REVIVE clears the filters.
- ACCEPT validates the offers (unknown, rescinded or used ones give
  TASK_LOST with REASON_INVALID_OFFERS) and each task (TASK_ERROR for a
  missing field or resources that were not offered: every launch resource
  must equal an offered object in all but its amount, allocation_info
  included). Valid tasks run as local processes (CommandInfo value and
  arguments, shell or not, with its environment) in a sandbox directory;
  their status updates (TASK_STARTING, TASK_RUNNING, then TASK_FINISHED or
  TASK_FAILED from the real exit) carry uuids and are sent again every
  second until acknowledged.
- KILL (SIGTERM, SIGKILL after 2 s), TEARDOWN (SIGKILL to every task process,
  by pid; the framework is removed), RECONCILE (latest states, TASK_LOST for
  unknown tasks, no uuids).

The scenario (--scenario FILE, JSON) scripts the rest:
  masters (int, 1), leader (index, 0), heartbeat (s, 1.0), seed (int),
  agents: [{"id", "hostname", "resources": [...], "attributes": [...],
            "broken": "no_resources" | "no_agent_id" | "no_id" | "bad_cpus"}],
  offer_interval (s, 0.1),
  rescind_first_offer (bool): the first offer is rescinded in the same write,
  subscribe_status ([code, body]): every SUBSCRIBE gets that answer,
  stream ("bad_length" | "truncated" | "oversize" | "bad_json" |
          "no_stream_id"): every event stream is broken that way,
  drop_after_subscribe (int): that many first streams are cut right after
          SUBSCRIBED,
  failover_when_running (int): once that many tasks run (and failover_delay
          seconds more), the leader moves to the next master and the old
          leader's stream goes silent ("failover_mode": "stall", the
          default) or is cut ("drop"),
  per_master ([{...}, ...]): subscribe_status and stream for each master
          port apart, with all_lead (bool): every port answers as a leader,
  kill_on_file ({"dir", "suffix"}): when a file so named appears under dir,
          every task process gets SIGKILL (an executor dies mid-job),
  zookeeper (bool): start a ZooKeeper server (Debian's zookeeper.jar, on
          127.0.0.1) and register every master in it as Mesos does, an
          ephemeral sequential json.info_ znode of MasterInfo JSON under
          /mesos, the leader first; a failover closes the old leader's
          session, so its znode goes and the next one leads. The ready file
          then holds "zk_port", or "zk_error" when the server did not start.

It writes --ready FILE ({"ports": [...], "pid": N}) once listening, and logs
every call, offer, update and process to --log FILE as JSON lines, which the
test reads back. SIGTERM ends it and every task process it started.
"""

import argparse
import base64
import ctypes
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/api/v1/scheduler"
TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
            "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"}

LOCK = threading.RLock()
LOG_LOCK = threading.Lock()


class Master:
    """Shared state of every master port (they are one replicated log here)."""

    def __init__(self, scenario, log_path, workdir):
        self.sc = scenario
        self.log_file = open(log_path, "a", buffering=1)
        self.workdir = workdir
        self.ports = []
        self.leader = scenario.get("leader", 0)
        self.heartbeat = float(scenario.get("heartbeat", 1.0))
        self.rng = random.Random(scenario.get("seed", 1))
        self.agents = scenario.get("agents", [])
        self.framework = None  # dict, see subscribe()
        self.removed = set()  # framework ids torn down
        self.offers = {}  # offer id -> {"agent", "resources", "state"}
        self.next_offer = 1
        self.tasks = {}  # task id -> dict
        self.filters = {}  # agent id -> (until, {name: millis})
        self.rescinded_first = False
        self.streams_started = 0
        self.failed_over = False
        self.killed_on_file = False
        self.running_seen = 0
        self.stopping = False
        self.zk_sessions = {}  # master index -> ZkSession

    def setting(self, index, key):
        """A scenario key, as overridden for master index by "per_master"."""
        per = self.sc.get("per_master", [])
        if index < len(per) and key in per[index]:
            return per[index][key]
        return self.sc.get(key)

    def log(self, **rec):
        rec["t"] = time.time()
        with LOG_LOCK:
            self.log_file.write(json.dumps(rec, sort_keys=True) + "\n")

    # -- resources ---------------------------------------------------------

    @staticmethod
    def identity(r):
        """A resource object without its amount: what the master compares."""
        return json.dumps({k: v for k, v in r.items() if k not in ("scalar",)}, sort_keys=True)

    @staticmethod
    def millis(r):
        try:
            return int(round(float(r["scalar"]["value"]) * 1000))
        except (KeyError, TypeError, ValueError):
            return None

    def available(self, agent):
        """The agent's resources minus what its live tasks hold (scalars only)."""
        used = {}
        for t in self.tasks.values():
            if t["agent"] == agent["id"] and t["state"] not in TERMINAL:
                for r in t["resources"]:
                    key = (r.get("name"), json.dumps(r.get("role")),
                           json.dumps(r.get("reservations")))
                    used[key] = used.get(key, 0) + (self.millis(r) or 0)
        out = []
        for r in agent.get("resources", []):
            r = json.loads(json.dumps(r))
            if r.get("type") == "SCALAR":
                key = (r.get("name"), json.dumps(r.get("role")),
                       json.dumps(r.get("reservations")))
                have = self.millis(r) or 0
                take = min(have, used.get(key, 0))
                used[key] = used.get(key, 0) - take
                if have - take <= 0:
                    continue
                r["scalar"]["value"] = (have - take) / 1000.0
            out.append(r)
        return out

    def role(self):
        roles = self.framework["info"].get("roles") or [self.framework["info"].get("role", "*")]
        return roles[0]

    def multi_role(self):
        caps = self.framework["info"].get("capabilities", [])
        return any(c.get("type") == "MULTI_ROLE" for c in caps)

    def make_offer(self, agent, resources):
        oid = "O%d" % self.next_offer
        self.next_offer += 1
        res = json.loads(json.dumps(resources))
        offer = {"id": {"value": oid}, "framework_id": {"value": self.framework["id"]},
                 "agent_id": {"value": agent["id"]},
                 "hostname": agent.get("hostname", "localhost"),
                 "url": {"scheme": "http", "address": {"hostname": "localhost", "ip": "127.0.0.1",
                                                       "port": 5051}, "path": "/slave(1)"},
                 "resources": res, "attributes": agent.get("attributes", []),
                 "executor_ids": []}
        if self.multi_role():
            offer["allocation_info"] = {"role": self.role()}
            for r in res:
                r["allocation_info"] = {"role": self.role()}
        broken = agent.get("broken")
        if broken == "no_resources":
            del offer["resources"]
        elif broken == "no_agent_id":
            del offer["agent_id"]
        elif broken == "no_id":
            del offer["id"]
        elif broken == "bad_cpus":
            for r in res:
                if r.get("name") == "cpus":
                    del r["scalar"]
        self.offers[oid] = {"agent": agent["id"], "resources": res, "state": "outstanding"}
        self.log(event="offer", offer=offer, agent=agent["id"], offer_id=oid)
        return offer

    def allocate(self):
        """One allocation round: returns the events to send, or []."""
        fw = self.framework
        if fw is None or fw.get("stream") is None or fw["suppressed"] or fw["stream"].silent:
            return []
        now = time.time()
        offers = []
        for agent in self.agents:
            if any(o["agent"] == agent["id"] and o["state"] == "outstanding"
                   for o in self.offers.values()):
                continue
            avail = self.available(agent)
            if not any(r.get("type") == "SCALAR" for r in avail):
                continue
            f = self.filters.get(agent["id"])
            if f is not None and now < f[0]:
                amounts = {}
                for r in avail:
                    if r.get("type") == "SCALAR":
                        amounts[r["name"]] = amounts.get(r["name"], 0) + self.millis(r)
                if all(v <= f[1].get(k, 0) for k, v in amounts.items()):
                    continue
            offers.append(self.make_offer(agent, avail))
        if not offers:
            return []
        events = [{"type": "OFFERS", "offers": {"offers": offers}}]
        if self.sc.get("rescind_first_offer") and not self.rescinded_first:
            self.rescinded_first = True
            oid = offers[0].get("id", {}).get("value")
            if oid is not None:
                self.offers[oid]["state"] = "rescinded"
                self.log(event="rescind", offer_id=oid)
                events.append({"type": "RESCIND", "rescind": {"offer_id": {"value": oid}}})
        return events

    def set_filter(self, agent_id, resources, refuse):
        amounts = {}
        for r in resources:
            m = self.millis(r)
            if r.get("type") == "SCALAR" and m is not None:
                amounts[r["name"]] = amounts.get(r["name"], 0) + m
        if refuse > 0:
            self.filters[agent_id] = (time.time() + refuse, amounts)

    # -- tasks -------------------------------------------------------------

    def status(self, t, state, message=None, reason=None, with_uuid=True, source="SOURCE_EXECUTOR"):
        st = {"task_id": {"value": t["id"]}, "state": state, "agent_id": {"value": t["agent"]},
              "source": source, "timestamp": time.time()}
        if message:
            st["message"] = message
        if reason:
            st["reason"] = reason
        if with_uuid:
            st["uuid"] = base64.b64encode(uuid.uuid4().bytes).decode()
        return st

    def update(self, t, state, message=None, reason=None):
        """A state change of task t: recorded, sent, resent until acknowledged."""
        t["state"] = state
        st = self.status(t, state, message, reason)
        t["unacked"].append(st)
        self.log(event="update", task_id=t["id"], state=state, uuid=st["uuid"],
                 message=message, pid=t.get("pid"))
        if state == "TASK_RUNNING":
            self.running_seen += 1
            self.maybe_failover()
        self.send([{"type": "UPDATE", "update": {"status": st}}])

    def send(self, events):
        fw = self.framework
        if fw is not None and fw.get("stream") is not None:
            fw["stream"].push(events)

    def maybe_failover(self):
        want = self.sc.get("failover_when_running")
        if want is None or self.failed_over or self.running_seen < want:
            return
        self.failed_over = True
        delay = float(self.sc.get("failover_delay", 0))
        if delay > 0:
            threading.Timer(delay, self.fail_over).start()
        else:
            self.fail_over()

    def fail_over(self):
        with LOCK:
            self.fail_over_locked()

    def fail_over_locked(self):
        old = self.leader
        self.leader = (self.leader + 1) % len(self.ports)
        if self.zk_sessions.get(old) is not None:
            self.zk_sessions.pop(old).close()  # its znode goes: the next one leads
        stream = self.framework.get("stream") if self.framework else None
        mode = self.sc.get("failover_mode", "stall")
        self.log(event="failover", old=old, new=self.leader, mode=mode)
        if stream is not None:
            if mode == "drop":
                stream.cut()
            else:
                stream.silence()
            self.framework["stream"] = None

    def launch(self, task_info, agent_id):
        tid = task_info["task_id"]["value"]
        sandbox = os.path.join(self.workdir, "sandbox-" + tid)
        os.makedirs(sandbox, exist_ok=True)
        t = {"id": tid, "agent": agent_id, "resources": task_info.get("resources", []),
             "state": "TASK_STAGING", "unacked": [], "killed": False, "sandbox": sandbox,
             "pid": None, "proc": None}
        self.tasks[tid] = t
        cmd = task_info["command"]
        env = dict(os.environ)
        for v in cmd.get("environment", {}).get("variables", []):
            env[v["name"]] = v.get("value", "")
        env["MESOS_TASK_ID"] = tid
        env["MESOS_SANDBOX"] = sandbox
        if cmd.get("shell", True):
            argv = ["/bin/sh", "-c", cmd["value"]]
        else:
            argv = cmd.get("arguments") or [cmd["value"]]
            argv = [cmd["value"]] + list(argv[1:])
        try:
            out = open(os.path.join(sandbox, "stdout"), "wb")
            err = open(os.path.join(sandbox, "stderr"), "wb")
            proc = subprocess.Popen(argv, env=env, cwd=sandbox, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            out.close()
            err.close()
        except OSError as e:
            self.update(t, "TASK_FAILED", "Failed to launch the command: %s" % e,
                        "REASON_COMMAND_EXECUTOR_FAILED")
            return
        t["proc"] = proc
        t["pid"] = proc.pid
        self.log(event="process", task_id=tid, pid=proc.pid, argv=argv)
        self.update(t, "TASK_STARTING")
        self.update(t, "TASK_RUNNING")
        threading.Thread(target=self.watch, args=(t,), daemon=True).start()

    def watch(self, t):
        rc = t["proc"].wait()
        with LOCK:
            if t["state"] in TERMINAL:
                return
            if t["killed"]:
                self.update(t, "TASK_KILLED", "Command terminated with signal %d" % -rc
                            if rc < 0 else "Command exited with status %d" % rc)
            elif rc == 0:
                self.update(t, "TASK_FINISHED", "Command exited with status 0")
            else:
                msg = ("Command terminated with signal %s" % signal.Signals(-rc).name
                       if rc < 0 else "Command exited with status %d" % rc)
                self.update(t, "TASK_FAILED", msg, "REASON_COMMAND_EXECUTOR_FAILED")
                try:
                    with open(os.path.join(t["sandbox"], "stderr"), "rb") as f:
                        tail = f.read()[-2000:].decode(errors="replace")
                    sys.stderr.write("test master: task %s failed (%s); its stderr ends:\n%s\n"
                                     % (t["id"], msg, tail))
                except OSError:
                    pass

    def kill_task(self, t, sig):
        p = t.get("proc")
        if p is not None and p.poll() is None:
            try:
                os.kill(p.pid, sig)  # by pid: only processes this master started
            except ProcessLookupError:
                pass

    def kill_all(self, why):
        for t in self.tasks.values():
            if t["state"] not in TERMINAL and t.get("proc") is not None:
                t["killed"] = why != "file"
                self.log(event="kill", task_id=t["id"], pid=t["pid"], why=why)
                self.kill_task(t, signal.SIGKILL)


class ZkSession:
    """A minimal ZooKeeper client (jute over TCP): connect, create, ping, close."""

    def __init__(self, port, timeout_ms=4000):
        self.lock = threading.Lock()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.xid = 0
        req = struct.pack(">iqiqi", 0, 0, timeout_ms, 0, 16) + b"\0" * 16 + b"\0"
        self.sock.sendall(struct.pack(">i", len(req)) + req)
        resp = self.packet()
        _, self.timeout, self.session = struct.unpack(">iiq", resp[:16])
        self.open = True
        threading.Thread(target=self.pinger, daemon=True).start()

    def recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise OSError("ZooKeeper closed the session's connection")
            out += chunk
        return out

    def packet(self):
        (n,) = struct.unpack(">i", self.recv(4))
        return self.recv(n)

    @staticmethod
    def string(text):
        raw = text.encode() if isinstance(text, str) else text
        return struct.pack(">i", len(raw)) + raw

    def call(self, op, body, xid=None):
        """Sends one request; returns (err, reply body) of its answer."""
        with self.lock:
            if xid is None:
                self.xid += 1
                xid = self.xid
            req = struct.pack(">ii", xid, op) + body
            self.sock.sendall(struct.pack(">i", len(req)) + req)
            while True:
                resp = self.packet()
                rxid, _, err = struct.unpack(">iqi", resp[:16])
                if rxid == xid:
                    return err, resp[16:]

    def create(self, path, data, flags):
        acl = struct.pack(">ii", 1, 31) + self.string("world") + self.string("anyone")
        err, body = self.call(1, self.string(path) + self.string(data) + acl +
                              struct.pack(">i", flags))
        if err == -110:  # ZNODEEXISTS
            return path
        if err != 0:
            raise OSError("ZooKeeper create %s: error %d" % (path, err))
        (n,) = struct.unpack(">i", body[:4])
        return body[4:4 + n].decode()

    def pinger(self):
        while self.open:
            time.sleep(self.timeout / 3000.0)
            try:
                if self.open:
                    self.call(11, b"", xid=-2)
            except OSError:
                return

    def close(self):
        if self.open:
            self.open = False
            try:
                self.call(-11, b"")
            except OSError:
                pass
            self.sock.close()


def zk_server(workdir):
    """Starts a ZooKeeper server on 127.0.0.1; returns (process, port) or raises."""
    java, jar = "/usr/bin/java", "/usr/share/java/zookeeper.jar"
    if os.environ.get("JAVA_HOME") and os.access(os.environ["JAVA_HOME"] + "/bin/java", os.X_OK):
        java = os.environ["JAVA_HOME"] + "/bin/java"
    if not os.access(java, os.X_OK) or not os.access(jar, os.R_OK):
        raise OSError("no Java runtime or no %s (Debian package zookeeper)" % jar)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    zdir = os.path.join(workdir, "zookeeper")
    os.makedirs(os.path.join(zdir, "data"), exist_ok=True)
    cfg = os.path.join(zdir, "zoo.cfg")
    with open(cfg, "w") as f:
        f.write("tickTime=500\nmaxSessionTimeout=4000\ndataDir=%s\nclientPort=%d\n"
                "clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n"
                "4lw.commands.whitelist=\n" % (os.path.join(zdir, "data"), port))

    def die_with_parent():
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    log = open(os.path.join(zdir, "server.log"), "wb")
    proc = subprocess.Popen([java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                             "-XX:-UsePerfData", "-Djava.net.preferIPv4Stack=true",
                             "-Dzookeeper.admin.enableServer=false", "-cp", jar,
                             "org.apache.zookeeper.server.ZooKeeperServerMain", cfg],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    log.close()
    end = time.time() + 30
    while time.time() < end:
        if proc.poll() is not None:
            raise OSError("the ZooKeeper server exited with %d; see %s/server.log"
                          % (proc.returncode, zdir))
        try:
            ZkSession(port).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise OSError("the ZooKeeper server did not answer within 30 s")


def zk_register(port, index):
    """Registers master index as Mesos does: an ephemeral sequential json.info_ znode."""
    mport = M.ports[index]
    info = {"address": {"hostname": "localhost", "ip": "127.0.0.1", "port": mport},
            "hostname": "localhost", "id": "master-%d" % index, "ip": 16777343,
            "pid": "master@127.0.0.1:%d" % mport, "port": mport, "version": "1.11.0"}
    zs = ZkSession(port)
    zs.create("/mesos", b"", 0)
    node = zs.create("/mesos/json.info_", json.dumps(info).encode(), 3)
    M.log(event="zk_register", master=index, node=node)
    return zs


M = None  # the Master


class Stream:
    """One SUBSCRIBE response: writes queued events as RecordIO in random chunks."""

    def __init__(self, handler, master_index, stream_id):
        self.h = handler
        self.index = master_index
        self.id = stream_id
        self.cond = threading.Condition()
        self.queue = []
        self.closed = False
        self.silent = False
        self.cut_now = False

    def push(self, events):
        with self.cond:
            self.queue.append(events)
            self.cond.notify()

    def silence(self):
        with self.cond:
            self.silent = True
            self.cond.notify()

    def cut(self):
        with self.cond:
            self.cut_now = True
            self.cond.notify()

    def encode(self, events):
        data = b"".join(b"%d\n%s" % (len(e), e) for e in
                        (json.dumps(ev).encode() for ev in events))
        return self.chunks(data)

    def chunks(self, data):
        out, i = [], 0
        while i < len(data):
            n = M.rng.choice([1, 2, 3, 5, 8, 13, 40, 200, 4096])
            piece = data[i:i + n]
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            i += n
        return b"".join(out)

    def client_gone(self):
        try:
            r, _, _ = select.select([self.h.connection], [], [], 0)
            if r:
                return self.h.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def run(self, first):
        """Writes until the client goes, the stream is cut, or the master ends."""
        next_hb = time.time() + M.heartbeat
        batch = first
        try:
            while True:
                if batch:
                    self.h.wfile.write(self.encode(batch))
                    batch = None
                with self.cond:
                    now = time.time()
                    if not self.queue and not self.cut_now:
                        self.cond.wait(min(0.05, max(0.0, next_hb - now)))
                    if self.cut_now:
                        return "cut"
                    if self.silent:
                        self.queue = []
                    elif self.queue:
                        batch = [ev for b in self.queue for ev in b]
                        self.queue = []
                if M.stopping or self.client_gone():
                    return "client gone"
                if not self.silent and not batch and time.time() >= next_hb:
                    batch = [{"type": "HEARTBEAT"}]
                    next_hb = time.time() + M.heartbeat
        except OSError:
            return "write failed"
        finally:
            self.closed = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Mesos/1.11.0-test"

    def log_message(self, fmt, *args):
        pass

    @property
    def index(self):
        return self.server.index

    def answer(self, code, body=b"", headers=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(404, "not found")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.path != PATH:
            self.answer(404, "not found")
            return
        with LOCK:
            leader = M.leader
        if leader != self.index and not M.sc.get("all_lead"):
            loc = "//127.0.0.1:%d%s" % (M.ports[leader], PATH)
            M.log(event="call", master=self.index, status=307, redirect=loc)
            self.answer(307, "", {"Location": loc})
            return
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip() not in ("application/json", "application/x-protobuf"):
            self.answer(415, "Expecting 'Content-Type' of application/json or "
                        "application/x-protobuf")
            return
        try:
            call = json.loads(raw)
            ctype_ok = isinstance(call, dict) and isinstance(call.get("type"), str)
        except ValueError:
            call, ctype_ok = None, False
        if not ctype_ok:
            M.log(event="call", master=self.index, status=400, raw=raw.decode(errors="replace"))
            self.answer(400, "Failed to validate scheduler::Call: bad JSON")
            return
        if call["type"] == "SUBSCRIBE":
            self.subscribe(call)
        else:
            self.other(call)

    def subscribe(self, call):
        sid_header = self.headers.get("Mesos-Stream-Id")
        info = call.get("subscribe", {}).get("framework_info")
        rec = dict(event="call", master=self.index, type="SUBSCRIBE", body=call)
        if sid_header is not None:
            M.log(status=400, **rec)
            self.answer(400, "Subscribe calls should not include the 'Mesos-Stream-Id' header")
            return
        if not isinstance(info, dict) or not info.get("user") or not info.get("name"):
            M.log(status=400, **rec)
            self.answer(400, "Failed to validate scheduler::Call: Expecting "
                        "'subscribe.framework_info' with 'user' and 'name'")
            return
        fid = info.get("id", {}).get("value")
        top = call.get("framework_id", {}).get("value")
        if fid is not None and top != fid:
            M.log(status=400, **rec)
            self.answer(400, "'framework_id' differs from 'subscribe.framework_info.id'")
            return
        status = M.setting(self.index, "subscribe_status")
        if status:
            M.log(status=status[0], **rec)
            self.answer(status[0], status[1])
            return
        stream_id = str(uuid.uuid4())
        broken = M.setting(self.index, "stream")
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        if broken != "no_stream_id":
            headers["Mesos-Stream-Id"] = stream_id
        with LOCK:
            if fid is not None and fid in M.removed:
                M.log(status=200, error="removed", **rec)
                self.send_headers(200, headers)
                s = Stream(self, self.index, stream_id)
                self.wfile.write(s.encode([{"type": "ERROR",
                                            "error": {"message": "Framework has been removed"}}]))
                self.end_stream()
                return
            if M.framework is None or fid is None or M.framework["id"] != fid:
                M.framework = {"id": fid or "F-" + str(uuid.uuid4())[:8], "info": info,
                               "stream": None, "suppressed": False}
            old = M.framework.get("stream")
            if old is not None:
                old.cut()
            M.framework["info"] = info
            M.framework["suppressed"] = False
            stream = Stream(self, self.index, stream_id)
            M.framework["stream"] = stream
            M.streams_started += 1
            nth = M.streams_started
            fwid = M.framework["id"]
            # Offers of an earlier connection are gone with it.
            for o in M.offers.values():
                if o["state"] == "outstanding":
                    o["state"] = "rescinded"
            pending = [{"type": "UPDATE", "update": {"status": st}}
                       for t in M.tasks.values() for st in t["unacked"]]
        M.log(status=200, stream_id=stream_id, framework_id=fwid, **rec)
        self.send_headers(200, headers)
        subscribed = {"type": "SUBSCRIBED",
                      "subscribed": {"framework_id": {"value": fwid},
                                     "heartbeat_interval_seconds": M.heartbeat,
                                     "master_info": {"id": "master-%d" % self.index,
                                                     "ip": 16777343, "port": M.ports[self.index],
                                                     "hostname": "localhost",
                                                     "version": "1.11.0"}}}
        if broken in ("bad_length", "truncated", "oversize", "bad_json"):
            raw = {"bad_length": b"12x\n{}", "bad_json": b"5\nhello",
                   "truncated": b'100\n{"type":"SUBSCRIBED"',
                   "oversize": b"99999999999\n"}[broken]
            self.wfile.write(stream.chunks(raw))
            if broken == "oversize":
                while not stream.client_gone() and not M.stopping:
                    time.sleep(0.05)
            self.end_stream()
            self.detach(stream)
            return
        if nth <= M.sc.get("drop_after_subscribe", 0):
            self.wfile.write(stream.encode([subscribed]))
            M.log(event="drop", master=self.index, stream_id=stream_id)
            self.detach(stream)
            self.cut_connection()
            return
        why = stream.run([subscribed] + pending)
        M.log(event="stream_end", master=self.index, stream_id=stream_id, why=why)
        self.detach(stream)
        if why == "cut":
            self.cut_connection()
        else:
            self.end_stream()

    def detach(self, stream):
        with LOCK:
            if M.framework is not None and M.framework.get("stream") is stream:
                M.framework["stream"] = None

    def send_headers(self, code, headers):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def end_stream(self):
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.close_connection = True

    def cut_connection(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def other(self, call):
        typ = call["type"]
        rec = dict(event="call", master=self.index, type=typ, body=call)
        sid = self.headers.get("Mesos-Stream-Id")
        with LOCK:
            fw = M.framework
            fid = call.get("framework_id", {}).get("value")
            if fid is None:
                code, msg = 400, "Expecting 'framework_id' to be present"
            elif fw is None or fw["id"] != fid or fid in M.removed:
                code, msg = 403, "Framework cannot be found"
            elif fw.get("stream") is None:
                code, msg = 403, "Framework is not subscribed"
            elif sid is None:
                code, msg = 400, "All non-subscribe calls should include the 'Mesos-Stream-Id' header"
            elif sid != fw["stream"].id:
                code, msg = 400, ("The stream ID '%s' included in this request didn't match the "
                                  "stream ID currently associated with framework ID %s" % (sid, fid))
            else:
                code, msg = self.dispatch(call)
            M.log(status=code, stream_id=sid, **rec)
        self.answer(code, msg)

    def dispatch(self, call):
        typ = call["type"]
        fw = M.framework
        if typ == "ACCEPT":
            return self.accept(call.get("accept", {}))
        if typ == "DECLINE":
            dec = call.get("decline", {})
            refuse = float(dec.get("filters", {}).get("refuse_seconds", 5.0))
            for oid in dec.get("offer_ids", []):
                o = M.offers.get(oid.get("value"))
                if o is not None and o["state"] == "outstanding":
                    o["state"] = "declined"
                    M.set_filter(o["agent"], o["resources"], refuse)
            return 202, ""
        if typ == "ACKNOWLEDGE":
            ack = call.get("acknowledge", {})
            t = M.tasks.get(ack.get("task_id", {}).get("value"))
            try:
                raw = base64.b64decode(ack.get("uuid", ""), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 16:
                return 400, "Failed to validate scheduler::Call: Not a valid UUID"
            if t is not None:
                t["unacked"] = [s for s in t["unacked"] if s["uuid"] != ack["uuid"]]
            return 202, ""
        if typ == "SUPPRESS":
            fw["suppressed"] = True
            return 202, ""
        if typ == "REVIVE":
            fw["suppressed"] = False
            M.filters.clear()
            return 202, ""
        if typ == "KILL":
            tid = call.get("kill", {}).get("task_id", {}).get("value")
            t = M.tasks.get(tid)
            if t is None:
                fake = {"id": tid or "", "agent": call.get("kill", {}).get("agent_id", {})
                        .get("value", ""), "unacked": []}
                M.send([{"type": "UPDATE", "update": {"status": M.status(
                    fake, "TASK_LOST", "Attempted to kill an unknown task", None, False,
                    "SOURCE_MASTER")}}])
            elif t["state"] not in TERMINAL:
                t["killed"] = True
                M.kill_task(t, signal.SIGTERM)
                threading.Timer(2.0, M.kill_task, (t, signal.SIGKILL)).start()
            return 202, ""
        if typ == "RECONCILE":
            want = [x.get("task_id", {}).get("value") for x in
                    call.get("reconcile", {}).get("tasks", [])]
            if not want:
                want = [tid for tid, t in M.tasks.items() if t["state"] not in TERMINAL]
            events = []
            for tid in want:
                t = M.tasks.get(tid)
                if t is None:
                    t = {"id": tid, "agent": "", "unacked": []}
                    state = "TASK_LOST"
                else:
                    state = t["state"]
                events.append({"type": "UPDATE", "update": {"status": M.status(
                    t, state, "Reconciliation", "REASON_RECONCILIATION", False,
                    "SOURCE_MASTER")}})
            M.send(events)
            return 202, ""
        if typ == "TEARDOWN":
            M.removed.add(fw["id"])
            M.kill_all("teardown")
            stream = fw.get("stream")
            if stream is not None:
                stream.cut()
            return 202, ""
        return 400, "Failed to validate scheduler::Call: unsupported call type %s" % typ

    def accept(self, acc):
        ids = [x.get("value") for x in acc.get("offer_ids", [])]
        offers = [M.offers.get(i) for i in ids]
        infos = []
        for op in acc.get("operations", []):
            if op.get("type") == "LAUNCH":
                infos.extend(op.get("launch", {}).get("task_infos", []))
        valid = bool(ids) and all(o is not None and o["state"] == "outstanding" for o in offers)
        valid = valid and len({o["agent"] for o in offers}) == 1
        if not valid:
            for ti in infos:
                t = {"id": ti.get("task_id", {}).get("value", ""),
                     "agent": ti.get("agent_id", {}).get("value", ""), "unacked": [],
                     "state": "TASK_STAGING"}
                M.log(event="invalid_accept", offer_ids=ids, task_id=t["id"])
                st = M.status(t, "TASK_LOST", "Task launched with invalid offers",
                              "REASON_INVALID_OFFERS", True, "SOURCE_MASTER")
                M.send([{"type": "UPDATE", "update": {"status": st}}])
            return 202, ""
        agent = offers[0]["agent"]
        offered = {}
        for o in offers:
            o["state"] = "used"
            for r in o["resources"]:
                k = M.identity(r)
                offered[k] = offered.get(k, 0) + (M.millis(r) or 0)
        refuse = float(acc.get("filters", {}).get("refuse_seconds", 5.0))
        for ti in infos:
            tid = ti.get("task_id", {}).get("value")
            err = None
            if not tid or not ti.get("name"):
                err = "Task has no name or task_id"
            elif tid in M.tasks:
                err = "Task has duplicate ID: " + tid
            elif ti.get("agent_id", {}).get("value") != agent:
                err = "Task uses an agent other than the offer's"
            elif ("command" in ti) == ("executor" in ti):
                err = "Task should have exactly one of CommandInfo or ExecutorInfo"
            elif not ti["command"].get("value"):
                err = "CommandInfo has no value"
            else:
                for r in ti.get("resources", []):
                    k = M.identity(r)
                    if M.multi_role() and r.get("allocation_info", {}).get("role") != M.role():
                        err = "Resource %s lacks allocation_info for role %s" % (r, M.role())
                        break
                    if k not in offered:
                        err = "Task uses resources that were not offered: %s" % k
                        break
                    offered[k] -= M.millis(r) or 0
                    if offered[k] < 0:
                        err = "Task uses more resources than offered: %s" % k
                        break
            if err is not None:
                t = {"id": tid or "", "agent": agent, "unacked": [], "state": "TASK_ERROR"}
                M.log(event="task_error", task_id=tid, error=err)
                st = M.status(t, "TASK_ERROR", err, "REASON_TASK_INVALID", True, "SOURCE_MASTER")
                M.send([{"type": "UPDATE", "update": {"status": st}}])
                continue
            M.launch(ti, agent)
        left = []
        for o in offers:
            left.extend(o["resources"])
        remaining = {k: v for k, v in offered.items() if v > 0}
        if remaining:
            M.set_filter(agent, [r for r in left if M.identity(r) in remaining], refuse)
        return 202, ""


def allocator():
    interval = float(M.sc.get("offer_interval", 0.1))
    while not M.stopping:
        time.sleep(interval)
        with LOCK:
            events = M.allocate()
            if events:
                M.send(events)


def resender():
    """Status updates are sent again until acknowledged, as agents do."""
    while not M.stopping:
        time.sleep(1.0)
        with LOCK:
            for t in M.tasks.values():
                for st in t["unacked"]:
                    M.send([{"type": "UPDATE", "update": {"status": st}}])


def file_killer(spec):
    while not M.stopping and not M.killed_on_file:
        for root, _, files in os.walk(spec["dir"]):
            if any(f.endswith(spec["suffix"]) for f in files):
                with LOCK:
                    M.killed_on_file = True
                    M.log(event="kill_on_file", dir=root)
                    M.kill_all("file")
                return
        time.sleep(0.01)


def main():
    global M
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    with open(args.scenario) as f:
        scenario = json.load(f)
    M = Master(scenario, args.log, args.workdir)
    servers = []
    for i in range(int(scenario.get("masters", 1))):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.index = i
        servers.append(srv)
        M.ports.append(srv.server_address[1])
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
    threading.Thread(target=allocator, daemon=True).start()
    threading.Thread(target=resender, daemon=True).start()
    if scenario.get("kill_on_file"):
        threading.Thread(target=file_killer, args=(scenario["kill_on_file"],), daemon=True).start()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    ready = {"ports": M.ports, "pid": os.getpid()}
    zk_proc = None
    if scenario.get("zookeeper"):
        try:
            zk_proc, ready["zk_port"] = zk_server(args.workdir)
            n = len(M.ports)
            for k in range(n):
                i = (M.leader + k) % n
                M.zk_sessions[i] = zk_register(ready["zk_port"], i)
        except OSError as e:
            ready["zk_error"] = str(e)
    tmp = args.ready + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ready, f)
    os.rename(tmp, args.ready)
    M.log(event="ready", ports=M.ports)
    done.wait()
    M.stopping = True
    with LOCK:
        M.kill_all("master exit")
    for srv in servers:
        srv.shutdown()
    for zs in list(M.zk_sessions.values()):
        zs.close()
    if zk_proc is not None:
        zk_proc.terminate()  # by pid: the server this master started
        try:
            zk_proc.wait(10)
        except subprocess.TimeoutExpired:
            zk_proc.kill()
    M.log(event="exit")


if __name__ == "__main__":
    main()
    # Daemon threads may sit in sleeps or socket reads; nothing is left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
