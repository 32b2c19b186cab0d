"""A real Kubernetes control plane for tests: etcd + kube-apiserver on loopback, no kubelet.

The binaries come from ``scripts/tools/kube.sh`` (``KUBEBUILDER_ASSETS`` wins there) and kubectl from
``scripts/tools/kubectl.sh``; ``make tools`` builds them once. The harness never builds: a missing
tool fails with the script's message saying how to get it.

What starts:

- etcd on two free loopback ports (client, peer), data in the work directory, no fsync;
- kube-apiserver on a free loopback port with ``--authorization-mode=RBAC``, a serving certificate
  from a throwaway CA made with ``openssl`` at start, client-certificate authentication (the admin
  identity is a client certificate in ``system:masters``) and a service-account signing key, so the
  TokenRequest API mints real, RBAC-checked tokens.

Usage::

    with ControlPlane.start(tmp_path) as cp:
        cp.kubectl("apply", "-f", "crds/")                # as admin
        cp.helm("install", "tollway", "charts/tollway")   # helm, with its state in the work dir
        cp.create_namespace("team-a")
        cp.create_service_account("team-a", "operator")
        cp.grant("team-a", "operator", [{"apiGroups": [""], "resources": ["configmaps"],
                                          "verbs": ["get", "list", "watch"]}])
        kubeconfig = cp.service_account_kubeconfig("team-a", "operator")
        subprocess.run([...], env={**os.environ, "KUBECONFIG": str(kubeconfig)})

No controllers run: a ServiceAccount gets no token Secret and no "default" ServiceAccount appears in
new namespaces (the ServiceAccount admission plugin is off, so Pods can still be created; they stay
Pending).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tollway.ports import free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "scripts" / "tools"

START_TIMEOUT = 120.0  # the apiserver takes ~5-20 s to be ready on a busy 2-core machine


class ToolMissing(RuntimeError):
    """A tool script found nothing built: its message says how to get the tool."""


def tool_paths(script: str) -> list[Path]:
    """Run ``scripts/tools/<script>`` without letting it build; return the paths it prints."""
    env = {**os.environ, "TOLLWAY_TOOLS_NO_BUILD": "1"}
    proc = subprocess.run(["bash", str(TOOLS / script)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise ToolMissing(f"scripts/tools/{script} failed:\n{proc.stderr.strip()}")
    return [Path(line) for line in proc.stdout.splitlines() if line.strip()]


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Process | None = None) -> None:
    """Poll ``check`` until it is true; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.2)
    detail = f":\n{proc.log_tail()}" if proc is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s{detail}")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until `check` returns something truthy and return it; errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (AssertionError, KeyError, OSError, RuntimeError, ValueError) as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s" + (f" (last: {last!r})" if last else ""))


@dataclass(eq=False)
class Process:
    """A child process whose stdout and stderr go to a log file; stopped at exit if still running."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str | Path], log: Path) -> Process:
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        process = cls(name, popen, log)
        _running.add(process)
        return process

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        _running.discard(self)
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


_running: set[Process] = set()


@atexit.register
def _stop_leftovers() -> None:
    """A test run that ends without its teardown (Ctrl-C, an error) leaves no servers behind."""
    for process in list(_running):
        process.stop(timeout=5)


def openssl(*args: str | Path, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ToolMissing("openssl is not on PATH: install it (Debian: apt-get install openssl)")
    proc = subprocess.run(
        [exe, *(str(a) for a in args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{proc.stderr}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, the apiserver's serving certificate, an admin client certificate, an SA key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def create(cls, d: Path) -> Pki:
        d.mkdir(parents=True, exist_ok=True)
        openssl(
            "req",
            "-x509",
            *_EC,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "7",
            "-subj",
            "/CN=tollway-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )

        def leaf(name: str, subject: str, extensions: list[str]) -> None:
            (d / f"{name}.ext").write_text(
                "\n".join(
                    [
                        "basicConstraints=CA:FALSE",
                        "subjectKeyIdentifier=hash",
                        "authorityKeyIdentifier=keyid,issuer",
                        *extensions,
                    ]
                )
                + "\n"
            )
            openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
            openssl(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "7",
                "-out",
                f"{name}.crt",
                "-extfile",
                f"{name}.ext",
                cwd=d,
            )

        leaf(
            "server",
            "/CN=kube-apiserver",
            [
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc",
            ],
        )
        leaf(
            "admin",
            "/O=system:masters/CN=tollway-test-admin",
            ["keyUsage=critical,digitalSignature,keyEncipherment", "extendedKeyUsage=clientAuth"],
        )
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key", cwd=d)
        openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
        return cls(
            ca_cert=d / "ca.crt",
            server_cert=d / "server.crt",
            server_key=d / "server.key",
            admin_cert=d / "admin.crt",
            admin_key=d / "admin.key",
            sa_key=d / "sa.key",
            sa_pub=d / "sa.pub",
        )


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body}")
        self.status = status
        self.body = body


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver; use :meth:`start`, and :meth:`stop` (or ``with``)."""

    workdir: Path
    url: str
    pki: Pki
    kubeconfig: Path
    kubectl_path: Path
    etcd: Process
    apiserver: Process
    _ssl: ssl.SSLContext = field(repr=False)

    # -- life cycle -------------------------------------------------------------------------------

    @classmethod
    def start_audited(cls, workdir: Path, policy: str) -> tuple[ControlPlane, Path]:
        """``start`` with the API server's audit log on, under ``policy`` (an audit.k8s.io Policy);
        returns the control plane and the audit log's path."""
        workdir.mkdir(parents=True, exist_ok=True)
        policy_file = workdir / "audit-policy.yaml"
        policy_file.write_text(policy)
        audit_log = workdir / "audit.log"
        audit = [f"--audit-policy-file={policy_file}", f"--audit-log-path={audit_log}"]
        return cls.start(workdir / "kube", extra_apiserver_args=[*audit, "--audit-log-maxage=1"]), audit_log

    @classmethod
    def start(cls, workdir: Path, *, extra_apiserver_args: Sequence[str] = ()) -> ControlPlane:
        """Start etcd and kube-apiserver under ``workdir``; return once ``/readyz`` answers ok."""
        apiserver_bin, etcd_bin = _kube_binaries()
        (kubectl_bin,) = tool_paths("kubectl.sh")
        workdir.mkdir(parents=True, exist_ok=True)
        pki = Pki.create(workdir / "pki")

        etcd: Process | None = None
        apiserver: Process | None = None
        etcd_url = url = ""
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        try:
            for _attempt in range(3):  # a free port can be taken between choosing and binding it
                client, peer = free_port(), free_port()
                etcd_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
                data = workdir / "etcd"
                shutil.rmtree(data, ignore_errors=True)
                etcd = Process.spawn(
                    "etcd",
                    [
                        etcd_bin,
                        "--name=default",
                        f"--data-dir={data}",
                        f"--listen-client-urls={etcd_url}",
                        f"--advertise-client-urls={etcd_url}",
                        f"--listen-peer-urls={peer_url}",
                        f"--initial-advertise-peer-urls={peer_url}",
                        f"--initial-cluster=default={peer_url}",
                        "--unsafe-no-fsync",
                        "--log-level=warn",
                    ],
                    workdir / "etcd.log",
                )
                try:
                    wait_until(partial(_etcd_healthy, etcd_url), 60, "etcd", etcd)
                    break
                except RuntimeError:
                    etcd.stop()
                    if "address already in use" not in etcd.log_tail():
                        raise
            else:
                raise RuntimeError("etcd: no free port pair after 3 tries")
            for _attempt in range(3):
                port = free_port()
                url = f"https://127.0.0.1:{port}"
                apiserver = Process.spawn(
                    "kube-apiserver",
                    [
                        apiserver_bin,
                        f"--etcd-servers={etcd_url}",
                        "--bind-address=127.0.0.1",
                        "--advertise-address=127.0.0.1",
                        f"--secure-port={port}",
                        f"--cert-dir={workdir / 'apiserver-certs'}",
                        f"--tls-cert-file={pki.server_cert}",
                        f"--tls-private-key-file={pki.server_key}",
                        f"--client-ca-file={pki.ca_cert}",
                        "--authorization-mode=RBAC",
                        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                        f"--service-account-key-file={pki.sa_pub}",
                        f"--service-account-signing-key-file={pki.sa_key}",
                        "--service-cluster-ip-range=10.0.0.0/24",
                        "--allow-privileged=true",
                        "--disable-admission-plugins=ServiceAccount",
                        "--endpoint-reconciler-type=none",  # no "kubernetes" Endpoints for 127.0.0.1
                        "--enable-priority-and-fairness=false",
                        "--profiling=false",
                        *extra_apiserver_args,
                    ],
                    workdir / "kube-apiserver.log",
                )
                try:
                    wait_until(partial(_readyz, url, context), START_TIMEOUT, "kube-apiserver", apiserver)
                    break
                except RuntimeError:
                    apiserver.stop()
                    if "address already in use" not in apiserver.log_tail():
                        raise
            else:
                raise RuntimeError("kube-apiserver: no free port after 3 tries")
        except BaseException:
            for process in (apiserver, etcd):
                if process is not None:
                    process.stop()
            raise
        assert etcd is not None
        assert apiserver is not None

        kubeconfig = workdir / "admin.kubeconfig"
        _write_kubeconfig(
            kubeconfig,
            url,
            pki.ca_cert,
            {"client-certificate-data": _b64(pki.admin_cert), "client-key-data": _b64(pki.admin_key)},
            user="admin",
            namespace="default",
        )
        return cls(workdir, url, pki, kubeconfig, kubectl_bin, etcd, apiserver, context)

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd. Safe to call twice."""
        self.apiserver.stop()
        self.etcd.stop()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ----------------------------------------------------------------------------------

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """``os.environ`` with ``KUBECONFIG`` (the admin one unless given) for a child process."""
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (as admin unless ``kubeconfig`` is given); raise with its stderr on failure."""
        proc = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def helm(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster, with its cache/config/data under the work directory."""
        helm_bin = tool_paths("helm.sh")[0]
        home = self.workdir / "helm"
        env = {
            **self.env(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        proc = subprocess.run(
            [str(helm_bin), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        """One REST call as admin (or with a bearer ``token``); returns the decoded JSON."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        context = self._ssl
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace"), f"{method} {path}") from None
        return json.loads(raw) if raw else None

    # -- namespaces, service accounts, RBAC -------------------------------------------------------

    def create_namespace(self, name: str) -> None:
        self.api(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )

    def create_service_account(self, namespace: str, name: str) -> None:
        self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )

    def grant(
        self, namespace: str, service_account: str, rules: list[dict[str, Any]], *, role: str | None = None
    ) -> None:
        """Create a Role with ``rules`` in ``namespace`` and bind it to the ServiceAccount."""
        role = role or f"{service_account}-role"
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        self.api(
            "POST",
            f"{rbac}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": role},
                "rules": rules,
            },
        )
        self.api(
            "POST",
            f"{rbac}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
            },
        )

    def grant_cluster(
        self, namespace: str, service_account: str, rules: list[dict[str, Any]], *, role: str | None = None
    ) -> None:
        """Like :meth:`grant` with a ClusterRole and ClusterRoleBinding (e.g. for CRDs, nodes)."""
        role = role or f"{namespace}-{service_account}-role"
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        self.api(
            "POST",
            f"{rbac}/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": rules,
            },
        )
        self.api(
            "POST",
            f"{rbac}/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
            },
        )

    def token(self, namespace: str, service_account: str, *, expiration_seconds: int = 3600) -> str:
        """Mint a bound token for the ServiceAccount with the TokenRequest API."""
        result = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        token: str = result["status"]["token"]
        return token

    def service_account_kubeconfig(
        self,
        namespace: str,
        service_account: str,
        path: Path | None = None,
        *,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Write a kubeconfig that authenticates as the ServiceAccount (a fresh token); return its path."""
        token = self.token(namespace, service_account, expiration_seconds=expiration_seconds)
        path = path or self.workdir / f"{namespace}.{service_account}.kubeconfig"
        _write_kubeconfig(
            path,
            self.url,
            self.pki.ca_cert,
            {"token": token},
            user=f"{namespace}-{service_account}",
            namespace=namespace,
        )
        return path


def _kube_binaries() -> tuple[Path, Path]:
    paths = tool_paths("kube.sh")
    by_name = {p.name: p for p in paths}
    if "kube-apiserver" not in by_name or "etcd" not in by_name:
        raise ToolMissing(f"scripts/tools/kube.sh printed {paths}, expected kube-apiserver and etcd")
    return by_name["kube-apiserver"], by_name["etcd"]


def _etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return bool(json.loads(response.read()).get("health") == "true")


def _readyz(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False  # 500 while post-start hooks (RBAC bootstrap roles, ...) are still running


def _write_kubeconfig(
    path: Path, url: str, ca: Path, user_fields: dict[str, str], *, user: str, namespace: str
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tollway-test", "cluster": {"server": url, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [{"name": user, "user": user_fields}],
        "contexts": [
            {"name": user, "context": {"cluster": "tollway-test", "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML: kubectl and clients read it
    path.chmod(0o600)


@contextmanager
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    """``with control_plane(tmp) as cp:`` — the same as ``with ControlPlane.start(tmp) as cp:``."""
    cp = ControlPlane.start(workdir)
    try:
        yield cp
    finally:
        cp.stop()
