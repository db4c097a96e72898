#!/usr/bin/env bash
# Validates the Kubernetes manifests under deploy/k8s (or the folder given as $1):
#   - every file parses as YAML (duplicate keys are errors, as kubectl makes them);
#   - every resource validates against the Kubernetes JSON schemas of each pinned
#     Kubernetes version, strictly (an unknown field is an error, and so is a kind or
#     apiVersion with no schema), with kubernetes-validate from PyPI, which bundles the
#     schemas and so works offline once installed;
#   - kustomization.yaml lists every manifest in the folder, and only files that exist;
#   - the gateway config inside the gateway-config ConfigMap parses, has
#     state.redis_url (or redis_url_env) and a model with replicas, and every key_env it
#     names is set on the gateway container from a Secret key that exists;
#   - cross-references and the rules deploy/README.md describes: Services, PDBs and the
#     HPA select or name workloads that exist, the replica URLs name StatefulSet pods,
#     every container has requests and limits, a locked-down securityContext and a
#     pinned image tag, novastack containers probe /ready and /health, the Prometheus
#     annotations name a container port, and terminationGracePeriodSeconds covers the
#     preStop sleep plus --shutdown-timeout with a margin.
# Exits non-zero, naming the file, on any error.
#
# Environment: NOVASTACK_KUBEVAL_VENV (default target/py-kubeval), NOVASTACK_KUBE_VERSIONS
# (default "1.30.0 1.37.0": the oldest and the newest Kubernetes this deployment targets).
set -euo pipefail
# A folder given as $1 is relative to where the script was started.
DIR=""
if [ $# -gt 0 ]; then
  case "$1" in /*) DIR="$1" ;; *) DIR="$PWD/$1" ;; esac
fi
cd "$(dirname "$0")/.."

VALIDATOR_VERSION=1.37.0
# The validator and the libraries that decide what "valid" means, pinned together.
PACKAGES=("kubernetes-validate==$VALIDATOR_VERSION" "jsonschema==4.26.0" "referencing==0.37.0" "PyYAML==6.0.4")
VENV="${NOVASTACK_KUBEVAL_VENV:-target/py-kubeval}"
KUBE_VERSIONS="${NOVASTACK_KUBE_VERSIONS:-1.30.0 1.37.0}"
DIR="${DIR:-deploy/k8s}"

[ -d "$DIR" ] || { echo "validate_deploy: $DIR is not a folder" >&2; exit 1; }

# The venv is reused while it holds exactly these pins (a stamp written after install).
installed() {
  [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.novastack-pins" 2>/dev/null)" = "${PACKAGES[*]}" ] \
    && "$VENV/bin/python" -c 'import kubernetes_validate.utils' 2>/dev/null
}

if ! installed; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  for attempt in 1 2 3; do
    "$VENV/bin/pip" install -q "${PACKAGES[@]}" && break
    if [ "$attempt" = 3 ]; then
      echo "validate_deploy: cannot install ${PACKAGES[*]}" >&2
      exit 1
    fi
    sleep 5
  done
  echo "${PACKAGES[*]}" > "$VENV/.novastack-pins"
  installed || { echo "validate_deploy: kubernetes-validate $VALIDATOR_VERSION did not install" >&2; exit 1; }
fi

# shellcheck disable=SC2086 # one argument per Kubernetes version
"$VENV/bin/python" - "$DIR" $KUBE_VERSIONS <<'PY'
import os
import re
import sys

import yaml
import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__ as kv_version

folder, versions = sys.argv[1], sys.argv[2:]
errors = []
notes = []


def error(path, msg):
    errors.append(f"ERROR {path}: {msg}")


class Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)


def load_all(path, text):
    try:
        return [d for d in yaml.load_all(text, Loader=Loader) if d is not None]
    except yaml.YAMLError as e:
        error(path, f"not valid YAML: {e}")
        return None


# --- parse every file -------------------------------------------------------------
files = sorted(f for f in os.listdir(folder) if f.endswith((".yaml", ".yml")))
if not files:
    error(folder, "no manifests")
resources = []  # (file, doc)
kustomization = None
for name in files:
    path = os.path.join(folder, name)
    with open(path, encoding="utf-8") as f:
        docs = load_all(path, f.read())
    if docs is None:
        continue
    if not docs:
        error(path, "empty")
    for i, doc in enumerate(docs):
        where = path if len(docs) == 1 else f"{path} (document {i + 1})"
        if not isinstance(doc, dict):
            error(where, f"a manifest must be a mapping, not {type(doc).__name__}")
            continue
        if doc.get("kind") == "Kustomization":
            if name not in ("kustomization.yaml", "kustomization.yml"):
                error(where, "a Kustomization belongs in kustomization.yaml")
            kustomization = (path, doc)
            continue
        missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str)]
        if missing or not isinstance((doc.get("metadata") or {}).get("name"), str):
            error(where, "needs apiVersion, kind and metadata.name")
            continue
        resources.append((where, doc))

# --- kustomization.yaml: lists exactly the manifests of the folder ----------------
if kustomization is None:
    error(folder, "no kustomization.yaml")
else:
    kpath, k = kustomization
    listed = k.get("resources") or []
    if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
        error(kpath, "resources: must be a list of file names")
        listed = []
    for r in listed:
        if not os.path.isfile(os.path.join(folder, r)):
            error(kpath, f"resources lists {r!r}, which is not a file in {folder}")
    for r in sorted({r for r in listed if listed.count(r) > 1}):
        error(kpath, f"resources lists {r!r} twice")
    manifest_files = {os.path.basename(w.split(" (")[0]) for w, _ in resources}
    for name in sorted(manifest_files - set(listed)):
        error(kpath, f"resources does not list {name}")

# --- the Kubernetes schemas, strict -----------------------------------------------
for where, doc in resources:
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            at = ".".join(str(p) for p in e.path) or "(top level)"
            error(where, f"{doc['kind']}/{doc['metadata']['name']} is not valid "
                         f"Kubernetes {e.version}: {at}: {e.message}")
        except kv.SchemaNotFoundError as e:
            error(where, e.message)
        except kv.VersionNotSupportedError as e:
            error(where, e.message)
        except Exception as e:  # noqa: BLE001 (anything else is an error too)
            error(where, f"cannot validate {doc['kind']}/{doc['metadata']['name']}: {e}")

# --- cross-references and deployment rules -----------------------------------------
by_kind = {}
for where, doc in resources:
    by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = (where, doc)

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
workloads = [(w, d) for kind in WORKLOADS for w, d in by_kind.get(kind, {}).values()]


def pod_spec(doc):
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_labels(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flag(args, name, default=None):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def container_ports(doc):
    ports = set()
    for c in pod_spec(doc).get("containers") or []:
        for p in c.get("ports") or []:
            ports.add(p.get("containerPort"))
            ports.add(p.get("name"))
    return ports


secrets = {name: set(((d.get("stringData") or {}) | (d.get("data") or {})).keys())
           for name, (_, d) in by_kind.get("Secret", {}).items()}

for where, doc in workloads:
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    spec = pod_spec(doc)
    pod_sc = spec.get("securityContext") or {}
    selector = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selects(selector, pod_labels(doc)):
        error(where, f"{name}: spec.selector.matchLabels does not match the pod template's labels")
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    for c in containers:
        cn = f"{name} container {c.get('name')}"
        image = c.get("image") or ""
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            error(where, f"{cn}: image {image!r} needs a pinned tag (not latest) or digest")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    error(where, f"{cn}: resources.{part}.{r} is not set")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            error(where, f"{cn}: securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            error(where, f"{cn}: securityContext.capabilities.drop must include ALL")
        if sc.get("readOnlyRootFilesystem") is not True:
            error(where, f"{cn}: securityContext.readOnlyRootFilesystem must be true")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            error(where, f"{cn}: runAsNonRoot must be true")
        if sc.get("privileged"):
            error(where, f"{cn}: must not be privileged")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref.get("name") in secrets and ref.get("key") not in secrets[ref["name"]]:
                error(where, f"{cn}: env {e.get('name')} reads key {ref.get('key')!r}, "
                             f"which Secret {ref['name']} does not have")
            elif ref and ref.get("name") not in secrets and not ref.get("optional"):
                notes.append(f"note {where}: {cn}: Secret {ref.get('name')} is not in {folder} "
                             f"(create it before applying)")
        args = c.get("args") or []
        if args[:1] == ["serve"]:
            # A novastack server or gateway: probes and the SIGTERM drain.
            for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
                got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
                if got != path:
                    error(where, f"{cn}: {probe} must be an httpGet of {path} (got {got!r})")
            env_names = {e.get("name") for e in c.get("env") or []}
            if flag(args, "--config") and "NOVASTACK_API_KEY" in env_names:
                # clap counts an environment value as given: --config conflicts with it.
                error(where, f"{cn}: NOVASTACK_API_KEY (serve --api-key) conflicts with --config")
            shutdown = flag(args, "--shutdown-timeout", "30")  # serve's default
            try:
                shutdown = int(shutdown)
            except ValueError:
                error(where, f"{cn}: --shutdown-timeout {shutdown!r} is not a whole number")
                continue
            pre = ((c.get("lifecycle") or {}).get("preStop") or {})
            cmd = (pre.get("exec") or {}).get("command") or []
            if (pre.get("sleep") or {}).get("seconds") is not None:
                pre_s = int(pre["sleep"]["seconds"])
            elif len(cmd) == 2 and cmd[0] == "sleep" and str(cmd[1]).isdigit():
                pre_s = int(cmd[1])
            else:
                error(where, f"{cn}: lifecycle.preStop must sleep (exec [sleep, N] or sleep.seconds)")
                pre_s = 0
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < pre_s + shutdown + 5:
                error(where, f"{name}: terminationGracePeriodSeconds {grace} must cover the preStop "
                             f"sleep ({pre_s} s) + --shutdown-timeout ({shutdown} s) + 5 s")
    ann = (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}
    if ann.get("prometheus.io/scrape") == "true":
        port = ann.get("prometheus.io/port")
        if not (port and port.isdigit() and int(port) in container_ports(doc)):
            error(where, f"{name}: prometheus.io/port {port!r} is not a container port")
        if ann.get("prometheus.io/path") != "/metrics":
            error(where, f"{name}: prometheus.io/path must be /metrics")

for where, svc in by_kind.get("Service", {}).values():
    sel = (svc.get("spec") or {}).get("selector") or {}
    targets = [d for _, d in workloads if selects(sel, pod_labels(d))]
    if not targets:
        error(where, f"Service/{svc['metadata']['name']}: its selector matches no workload")
    for p in (svc.get("spec") or {}).get("ports") or []:
        tp = p.get("targetPort", p.get("port"))
        if targets and not any(tp in container_ports(d) for d in targets):
            error(where, f"Service/{svc['metadata']['name']}: targetPort {tp!r} is no container port")

for where, pdb in by_kind.get("PodDisruptionBudget", {}).values():
    sel = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not any(selects(sel, pod_labels(d)) for _, d in workloads):
        error(where, f"PodDisruptionBudget/{pdb['metadata']['name']}: its selector matches no workload")

for where, hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    if ref.get("name") not in by_kind.get(ref.get("kind"), {}):
        error(where, f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: "
                     f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not in {folder}")

for where, sts in by_kind.get("StatefulSet", {}).values():
    svc = (sts.get("spec") or {}).get("serviceName")
    found = by_kind.get("Service", {}).get(svc)
    if not found or (found[1].get("spec") or {}).get("clusterIP") != "None":
        error(where, f"StatefulSet/{sts['metadata']['name']}: serviceName {svc!r} "
                     f"must be a headless Service (clusterIP: None) in {folder}")

# --- the gateway config in its ConfigMap -------------------------------------------
cm = by_kind.get("ConfigMap", {}).get("gateway-config")
if cm is None:
    error(folder, "no ConfigMap gateway-config")
else:
    where, doc = cm
    text = (doc.get("data") or {}).get("gateway.yaml")
    cfg = load_all(f"{where} data.gateway.yaml", text) if isinstance(text, str) else None
    if text is None:
        error(where, "ConfigMap gateway-config has no data key gateway.yaml")
    elif cfg is not None:
        cfg = cfg[0] if len(cfg) == 1 and isinstance(cfg[0], dict) else None
        if cfg is None:
            error(where, "data.gateway.yaml must be one YAML mapping")
    if isinstance(cfg, dict):
        at = f"{where} (data.gateway.yaml)"
        state = cfg.get("state")
        if not isinstance(state, dict) or not (state.get("redis_url") or state.get("redis_url_env")):
            error(at, "state.redis_url (or state.redis_url_env) is required: gateway "
                      "replicas share their limits and cooldowns in Redis")
        elif state.get("redis_url") and not re.match(r"^rediss?://", str(state["redis_url"])):
            error(at, "state.redis_url must start with redis:// or rediss://")
        models = cfg.get("models")
        if not isinstance(models, list) or not models:
            error(at, "models: at least one model is needed")
            models = []
        pooled = [m for m in models if isinstance(m, dict) and m.get("replicas")]
        if not pooled:
            error(at, "no model has replicas (the engine StatefulSet's pods)")
        for m in pooled:
            reps = m["replicas"]
            if not isinstance(reps, list) or not all(isinstance(u, str) for u in reps):
                error(at, f"models ({m.get('name')}).replicas: must be a list of URLs")
                continue
            for u in reps:
                hit = re.match(r"^https?://([a-z0-9-]+)-(\d+)\.([a-z0-9-]+)(?::\d+)?(/|$)", u)
                if not u.startswith(("http://", "https://")):
                    error(at, f"models ({m.get('name')}).replicas: {u!r} must start with http:// or https://")
                elif hit and hit.group(1) in by_kind.get("StatefulSet", {}):
                    _, sts = by_kind["StatefulSet"][hit.group(1)]
                    n = (sts.get("spec") or {}).get("replicas", 1)
                    if int(hit.group(2)) >= n:
                        error(at, f"models ({m.get('name')}).replicas: {u!r} names pod "
                                  f"{hit.group(1)}-{hit.group(2)}, but StatefulSet/{hit.group(1)} "
                                  f"has replicas: {n}")
                    if (sts.get("spec") or {}).get("serviceName") != hit.group(3):
                        error(at, f"models ({m.get('name')}).replicas: {u!r}: StatefulSet/"
                                  f"{hit.group(1)}'s serviceName is not {hit.group(3)!r}")
        # Every key_env must reach the gateway's environment.
        key_envs = [k.get("key_env") for k in cfg.get("api_keys") or [] if isinstance(k, dict)]
        key_envs += [(m.get("auth") or {}).get("key_env") for m in models
                     if isinstance(m, dict) and isinstance(m.get("auth"), dict)]
        if isinstance(state, dict) and state.get("redis_url_env"):
            key_envs.append(state["redis_url_env"])
        mounting = [(w, d) for w, d in workloads
                    if any((v.get("configMap") or {}).get("name") == "gateway-config"
                           for v in pod_spec(d).get("volumes") or [])]
        if not mounting:
            error(where, "no workload mounts ConfigMap gateway-config")
        for w, d in mounting:
            env = set()
            for c in pod_spec(d).get("containers") or []:
                env |= {e.get("name") for e in c.get("env") or []}
                for src in c.get("envFrom") or []:
                    env |= {(src.get("prefix") or "") + k
                            for k in secrets.get((src.get("secretRef") or {}).get("name"), ())}
            for k in key_envs:
                if k and k not in env:
                    error(w, f"{d['kind']}/{d['metadata']['name']}: the gateway config's key_env "
                             f"{k} is not set in its environment (the gateway refuses to start)")

for line in dict.fromkeys(notes):
    print(line)
if errors:
    for line in errors:
        print(line, file=sys.stderr)
    print(f"validate_deploy: {len(errors)} error(s) in {folder}", file=sys.stderr)
    sys.exit(1)
print(f"validate_deploy: {folder}: {len(files)} files, {len(resources)} resources valid "
      f"against Kubernetes {', '.join(versions)} (kubernetes-validate {kv_version}, strict), "
      f"kustomization complete, gateway config checked")
PY

# kubectl, where there is one, also renders the kustomization (offline, client side).
if command -v kubectl > /dev/null 2>&1; then
  if ! rendered="$(kubectl kustomize "$DIR" 2>&1)"; then
    echo "ERROR $DIR/kustomization.yaml: kubectl kustomize failed:" >&2
    echo "$rendered" >&2
    exit 1
  fi
  echo "kubectl kustomize $DIR: rendered $(grep -c '^kind:' <<< "$rendered") resources"
fi
