#!/usr/bin/env python3
"""Turns deploy/k8s/ into the processes a cluster would start, for a test.

Reads every manifest of a directory (PyYAML), checks the structure kubectl
and the Kubernetes API server would insist on and the rules spate's manifests
follow, and prints each container's command line -- command and args, with
$(VAR) expanded from its env -- and that env, as the container would get
them. Used by tests/launcher/test_deploy.c, which runs exactly these lines
as local processes on 127.0.0.1; run by hand it shows what the manifests
start:

    python3 tests/launcher/deploy_cmdlines.py deploy/k8s

No cluster is involved. What a cluster would provide is substituted here,
and only this:

  * the downward API: status.podIP -> 127.0.0.1, metadata.name and
    metadata.namespace -> the pod's, the Job's completion-index annotation
    -> the pod's index (JOB_COMPLETION_INDEX is set as the Job controller
    sets it);
  * secretKeyRef -> the value in the Secret manifest;
  * a Service's DNS names (NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local)
    -> 127.0.0.1, the IP of the pod it selects; its port and that pod's
    containerPort -> --port (a free port, as pods do not share a host);
  * the pod's network interface (FI_TCP_IFACE eth0) -> lo;
  * volume mounts -> directories under --root (created): a
    persistentVolumeClaim is one directory all pods share, an emptyDir one
    per pod;
  * the image's ENTRYPOINT program (spate) -> --spate.

--set-env NAME=VALUE and --set-arg=OPTION=VALUE then replace a value the
manifests give (an env var of every container that sets it; the value after
OPTION on every command line that has it), so a test can scale sizes down;
one that replaces nothing is an error.

Output: shell lines (`env -i K=V ... spate ...`), or with --json one object:
{"namespace", "executors": N, "processes": [{"pod", "role", "index",
"argv", "env"}]}, the driver's pod first, then the Job's pods by index.
Exit codes: 0 done; 1 the manifests break a rule (each problem on stderr);
2 bad usage; 3 PyYAML is missing.
"""

import argparse
import base64
import json
import math
import os
import re
import shlex
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    print("deploy_cmdlines: PyYAML is missing (Debian: python3-yaml)", file=sys.stderr)
    sys.exit(3)

LOOPBACK = "127.0.0.1"
POD_IFACE, LOCAL_IFACE = "eth0", "lo"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("v1", "Pod"),
    ("batch/v1", "Job"),
}
MIB = 1 << 20


class ManifestError(Exception):
    pass


problems = []


def problem(where, text):
    problems.append("%s: %s" % (where, text))


# --------------------------------------------------------------------------
# Quantities and sizes
# --------------------------------------------------------------------------

K8S_SUFFIX = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def k8s_bytes(q):
    """A Kubernetes memory quantity (9012Mi, 8Gi, 1e9) in bytes."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGT]i?|)", str(q))
    if m is None:
        raise ManifestError("'%s' is not a memory quantity" % q)
    return int(float(m.group(1)) * K8S_SUFFIX[m.group(2)])


def k8s_cpus(q):
    """A Kubernetes cpu quantity (4, "4", 500m) in cpus."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m?)", str(q))
    if m is None:
        raise ManifestError("'%s' is not a cpu quantity" % q)
    return float(m.group(1)) / (1000 if m.group(2) else 1)


def spate_bytes(s):
    """A spate size (8g, 512m, 4096): binary multiples, as in spate's conf."""
    m = re.fullmatch(r"([0-9]+)([kmgtp]?)", s.strip().lower())
    if m is None:
        raise ManifestError("'%s' is not a spate size" % s)
    return int(m.group(1)) << (10 * " kmgtp".index(m.group(2) or " "))


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def load(directory):
    docs = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8") as f:
            try:
                for doc in yaml.safe_load_all(f):
                    if isinstance(doc, dict):
                        meta = doc.get("metadata") or {}
                        where = "%s: %s %s" % (name, doc.get("kind"), meta.get("name"))
                        docs.append((where, doc))
                    elif doc is not None:
                        raise ManifestError("%s: a document that is not a mapping" % path)
            except yaml.YAMLError as e:
                raise ManifestError("%s: not YAML: %s" % (path, e)) from e
    if not docs:
        raise ManifestError("%s holds no manifests" % directory)
    return docs


def entrypoint(dockerfile):
    """The program of the Dockerfile's exec-form ENTRYPOINT."""
    with open(dockerfile, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*ENTRYPOINT\s+(\[.*\])\s*$", line)
            if m:
                return json.loads(m.group(1))
    raise ManifestError("%s has no exec-form ENTRYPOINT [...]" % dockerfile)


# --------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------


def check_strings(where, container):
    """kubectl refuses command, args and env values that are not strings."""
    for key in ("command", "args"):
        for i, v in enumerate(container.get(key) or []):
            if not isinstance(v, str):
                problem(where, "%s[%d] is %r, not a string: quote it" % (key, i, v))
    for e in container.get("env") or []:
        if "value" in e and not isinstance(e["value"], str):
            problem(where, "env %s value %r is not a string: quote it" % (e.get("name"), e["value"]))
        if ("value" in e) == ("valueFrom" in e):
            problem(where, "env %s needs exactly one of value and valueFrom" % e.get("name"))


def check_object(where, doc, namespace):
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if (api, kind) not in KNOWN_KINDS:
        problem(where, "unexpected apiVersion/kind %s/%s" % (api, kind))
    meta = doc.get("metadata") or {}
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", str(meta.get("name", ""))):
        problem(where, "metadata.name %r is not a DNS label" % meta.get("name"))
    if kind != "Namespace" and meta.get("namespace") != namespace:
        problem(where, "namespace %r, the Namespace manifest is %r" % (meta.get("namespace"), namespace))


def pod_spec(doc):
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def pod_labels(doc):
    if doc["kind"] == "Pod":
        return doc["metadata"].get("labels") or {}
    return (doc["spec"]["template"].get("metadata") or {}).get("labels") or {}


def secret_values(docs):
    out = {}
    for where, d in docs:
        if d.get("kind") != "Secret":
            continue
        values = dict(d.get("stringData") or {})
        for k, v in (d.get("data") or {}).items():
            values[k] = base64.b64decode(v).decode()
        out[d["metadata"]["name"]] = values
    return out


# --------------------------------------------------------------------------
# Expansion: what the kubelet does with env and $(VAR)
# --------------------------------------------------------------------------


def expand(text, env):
    """Kubernetes $(VAR) expansion: $$ is a literal $, unknown names stay."""

    def one(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def container_env(where, container, pod, secrets):
    env = {}
    if pod["index"] is not None:
        env["JOB_COMPLETION_INDEX"] = str(pod["index"])
    fields = {
        "status.podIP": LOOPBACK,
        "metadata.name": pod["name"],
        "metadata.namespace": pod["namespace"],
    }
    if pod["index"] is not None:
        fields[INDEX_ANNOTATION] = str(pod["index"])
    for e in container.get("env") or []:
        name = e["name"]
        if "value" in e:
            env[name] = expand(str(e["value"]), env)
            continue
        src = e.get("valueFrom") or {}
        if "fieldRef" in src:
            path = src["fieldRef"].get("fieldPath")
            if path not in fields:
                problem(where, "env %s: fieldPath %s has no local equivalent" % (name, path))
                continue
            env[name] = fields[path]
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            value = secrets.get(ref.get("name"), {}).get(ref.get("key"))
            if value is None:
                problem(where, "env %s: no key %s in Secret %s" % (name, ref.get("key"), ref.get("name")))
                continue
            env[name] = value
        else:
            problem(where, "env %s: unsupported valueFrom %s" % (name, list(src)))
    return env


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------


def parse_overrides(items, what):
    out = {}
    for item in items:
        if "=" not in item:
            raise ManifestError("%s '%s' is not NAME=VALUE" % (what, item))
        k, v = item.split("=", 1)
        out[k] = v
    return out


def arg_after(argv, option):
    for i, a in enumerate(argv[:-1]):
        if a == option:
            return argv[i + 1]
    return None


def plan(args):
    docs = load(args.manifests)
    spate = entrypoint(args.dockerfile)
    set_env = parse_overrides(args.set_env, "--set-env")
    set_arg = parse_overrides(args.set_arg, "--set-arg")

    namespaces = [d["metadata"]["name"] for _, d in docs if d.get("kind") == "Namespace"]
    if len(namespaces) != 1:
        raise ManifestError("want exactly one Namespace manifest, found %d" % len(namespaces))
    namespace = namespaces[0]
    for where, d in docs:
        check_object(where, d, namespace)
    if problems:
        return None
    secrets = secret_values(docs)
    for name, values in secrets.items():
        for k, v in values.items():
            if len(v.encode()) < 16:
                problem("Secret " + name, "key %s holds %d bytes; spate needs 16" % (k, len(v)))

    claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}
    pods_docs = [(w, d) for w, d in docs if d["kind"] in ("Pod", "Job")]
    services = [(w, d) for w, d in docs if d["kind"] == "Service"]

    # Services: headless, selecting exactly one pod, whose containerPort is the target.
    dns = {}  # host:port as the manifests write it -> local
    container_ports = set()
    for where, svc in services:
        spec = svc.get("spec") or {}
        if spec.get("clusterIP") != "None":
            problem(where, "the driver's Service must be headless (clusterIP: None)")
        selector = spec.get("selector") or {}
        chosen = [
            (w, d)
            for w, d in pods_docs
            if selector and all(pod_labels(d).get(k) == v for k, v in selector.items())
        ]
        if len(chosen) != 1 or chosen[0][1]["kind"] != "Pod":
            problem(where, "its selector must match exactly the driver Pod, matches %d" % len(chosen))
            continue
        ports = spec.get("ports") or []
        if len(ports) != 1:
            problem(where, "want one port, found %d" % len(ports))
            continue
        port, target = ports[0].get("port"), ports[0].get("targetPort", ports[0].get("port"))
        declared = {
            p.get("containerPort")
            for c in pod_spec(chosen[0][1])["containers"]
            for p in c.get("ports") or []
        }
        if target not in declared:
            problem(where, "targetPort %s is no containerPort of %s" % (target, chosen[0][0]))
        container_ports.add(target)
        name = svc["metadata"]["name"]
        for host in (name, name + "." + namespace, name + "." + namespace + ".svc",
                     name + "." + namespace + ".svc.cluster.local"):
            dns["%s:%s" % (host, port)] = "%s:%d" % (LOOPBACK, args.port)
    for p in container_ports:
        for host in (LOOPBACK, "0.0.0.0"):
            dns["%s:%s" % (host, p)] = "%s:%d" % (LOOPBACK, args.port)

    # Pods: the Pods as they are, a Job as `completions` pods with their index.
    pods = []
    for where, d in pods_docs:
        meta = d["metadata"]
        if d["kind"] == "Pod":
            pods.append({"where": where, "doc": d, "name": meta["name"], "index": None,
                         "namespace": namespace})
            continue
        spec = d["spec"]
        if spec.get("completionMode") != "Indexed":
            problem(where, "the executors' Job must be completionMode: Indexed")
        n = spec.get("completions")
        if not isinstance(n, int) or n < 1 or spec.get("parallelism") != n:
            problem(where, "completions (%r) and parallelism (%r) must be the same count: every "
                    "executor runs at once" % (n, spec.get("parallelism")))
            continue
        if pod_spec(d).get("restartPolicy") not in ("OnFailure", "Never"):
            problem(where, "a Job's pods need restartPolicy OnFailure or Never")
        for i in range(n):
            pods.append({"where": "%s pod %d" % (where, i), "doc": d, "name": "%s-%d" % (meta["name"], i),
                         "index": i, "namespace": namespace})

    processes = []
    used = set()
    executors = 0
    driver_waits = None
    for pod in pods:
        spec = pod_spec(pod["doc"])
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers") or []:
            where = "%s container %s" % (pod["where"], c.get("name"))
            check_strings(where, c)
            env = container_env(where, c, pod, secrets)
            for k, v in set_env.items():
                if k in env:
                    env[k] = v
                    used.add("--set-env " + k)
            argv = list(c.get("command") or entrypoint(args.dockerfile)) + list(c.get("args") or [])
            argv = [expand(str(a), env) for a in argv]
            if argv[0] != spate[0]:
                problem(where, "runs %s, the image's entrypoint is %s" % (argv[0], spate[0]))
            argv[0] = args.spate
            for i in range(len(argv) - 1):
                opt = argv[i]
                if opt in set_arg:
                    argv[i + 1] = set_arg[opt]
                    used.add("--set-arg " + opt)
            # Names and ports the cluster would resolve, then the pod's volumes.
            subst = dict(dns)
            if env.get("FI_TCP_IFACE") == POD_IFACE:
                env["FI_TCP_IFACE"] = LOCAL_IFACE
            mounts = []
            for m in c.get("volumeMounts") or []:
                vol = volumes.get(m.get("name"))
                if vol is None:
                    problem(where, "mounts volume %s, which the pod does not declare" % m.get("name"))
                    continue
                if "persistentVolumeClaim" in vol:
                    claim = vol["persistentVolumeClaim"].get("claimName")
                    if claim not in claims:
                        problem(where, "volume %s claims %s, which no manifest declares" % (m["name"], claim))
                    local = os.path.join(args.root, "pvc", claim)
                elif "emptyDir" in vol:
                    local = os.path.join(args.root, pod["name"], m["name"])
                else:
                    problem(where, "volume %s is neither a claim nor an emptyDir" % m["name"])
                    continue
                mounts.append((m["mountPath"].rstrip("/"), local))

            def local_value(v):
                for k, rep in subst.items():
                    v = re.sub(r"(?<![\w.-])" + re.escape(k) + r"(?![\w.])", rep, v)
                for path, local in mounts:
                    v = re.sub(r"(?:^|(?<=[,=]))" + re.escape(path) + r"(?=/|,|$)", local, v)
                return v

            argv = [argv[0]] + [local_value(a) for a in argv[1:]]
            env = {k: local_value(v) for k, v in env.items()}
            for a in argv + list(env.values()):
                if re.search(r"\$\([A-Za-z_]", a):
                    problem(where, "'%s' refers to a variable the container does not define" % a)
            if args.root is not None and args.create_dirs:
                for _, local in mounts:
                    os.makedirs(local, exist_ok=True)
            role = pod_labels(pod["doc"]).get("app.kubernetes.io/component", "")
            if role == "executor":
                executors += 1
                check_executor(where, argv, env, c, dns)
            elif role == "driver":
                waits = arg_after(argv, "--wait-executors")
                driver_waits = int(waits) if waits and waits.isdigit() else None
                if argv[1:2] != ["run"] or driver_waits is None or arg_after(argv, "--listen") is None:
                    problem(where, "the driver must run `spate run JOB --wait-executors N --listen ADDR`")
            else:
                problem(where, "label app.kubernetes.io/component is %r, want driver or executor" % role)
            processes.append({"pod": pod["name"], "role": role, "index": pod["index"],
                              "argv": argv, "env": env})
    if driver_waits is not None and driver_waits != executors:
        problem("driver", "--wait-executors %d, but the manifests start %d executors"
                % (driver_waits, executors))
    for what in ["--set-env " + k for k in set_env] + ["--set-arg " + k for k in set_arg]:
        if what not in used:
            problem("overrides", "%s: no container sets it, so there is nothing to replace" % what)
    drivers = [p for p in processes if p["role"] == "driver"]
    if len(drivers) != 1:
        problem("manifests", "want one driver container, found %d" % len(drivers))
    processes.sort(key=lambda p: (p["role"] != "driver", p["index"] or 0))
    return {"namespace": namespace, "executors": executors, "processes": processes}


def check_executor(where, argv, env, container, dns):
    """An executor must reach the driver through the Service and be sized as it runs."""
    target = arg_after(argv, "--driver")
    if argv[1:2] != ["executor"] or target is None:
        problem(where, "an executor must run `spate executor --driver HOST:PORT`")
    elif target not in dns.values():
        problem(where, "--driver %s is not the driver's Service" % target)
    if "SPATE_SECRET" not in env:
        problem(where, "SPATE_SECRET is not set (from the Secret)")
    res = container.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    if req != lim:
        problem(where, "requests %s differ from limits %s: an executor is sized exactly" % (req, lim))
    cores = (container_static_env(container)).get("SPATE_CONF_EXECUTOR_CORES")
    mem = (container_static_env(container)).get("SPATE_CONF_MEMORY_EXECUTOR")
    if cores is None or mem is None:
        problem(where, "set executor.cores and memory.executor (SPATE_CONF_EXECUTOR_CORES, "
                "SPATE_CONF_MEMORY_EXECUTOR): the resources follow from them")
        return
    try:
        if k8s_cpus(req.get("cpu", "0")) != int(cores):
            problem(where, "cpu %s, but executor.cores is %s" % (req.get("cpu"), cores))
        exec_bytes = spate_bytes(mem)
        overhead = max(math.ceil(exec_bytes * 0.10 / MIB) * MIB, 384 * MIB)
        want = exec_bytes + overhead
        if k8s_bytes(req.get("memory", "0")) != want:
            problem(where, "memory %s, but memory.executor %s + max(10%%, 384Mi) is %dMi"
                    % (req.get("memory"), mem, want // MIB))
    except ManifestError as e:
        problem(where, str(e))


def container_static_env(container):
    return {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifests", nargs="?", default=os.path.join(repo, "deploy", "k8s"))
    ap.add_argument("--dockerfile", help="the image's Dockerfile (default: ../Dockerfile)")
    ap.add_argument("--spate", default="spate", help="the spate binary to run")
    ap.add_argument("--port", type=int, default=7077, help="local port of the driver's Service")
    ap.add_argument("--root", help="directory for the pods' volumes (default: a path under /tmp)")
    ap.add_argument("--create-dirs", action="store_true", help="create the volume directories")
    ap.add_argument("--set-env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--set-arg", action="append", default=[], metavar="OPTION=VALUE")
    ap.add_argument("--json", action="store_true", help="print JSON for the test")
    args = ap.parse_args()
    if args.dockerfile is None:
        args.dockerfile = os.path.join(os.path.dirname(os.path.abspath(args.manifests)), "Dockerfile")
    if args.root is None:
        args.root = "/tmp/spate-deploy"
    try:
        result = plan(args)
    except (ManifestError, OSError, KeyError, TypeError) as e:
        problems.append(str(e) if not isinstance(e, (KeyError, TypeError)) else
                        "malformed manifest: %s %s" % (type(e).__name__, e))
        result = None
    if problems:
        for p in problems:
            print("deploy_cmdlines: " + p, file=sys.stderr)
        return 1
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    for p in result["processes"]:
        env = " ".join(shlex.quote("%s=%s" % kv) for kv in sorted(p["env"].items()))
        print("# pod %s (%s)" % (p["pod"], p["role"]))
        print("env -i %s %s" % (env, " ".join(shlex.quote(a) for a in p["argv"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
