"""The gateway's AWS web identity for Bedrock: the ServiceAccount's IRSA annotation, and for clusters
without EKS's webhook the projected STS token and the variables botocore and the sidecar read."""

from __future__ import annotations

from typing import Any

from chart_env import ROOT, documents, template

ROLE = "arn:aws:iam::123456789012:role/tollway-gateway"
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


def _render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def _gateway_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway")
    )
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _sidecar(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == "sidecar")


def test_the_service_account_carries_the_irsa_annotation(helm: str) -> None:
    docs = _render(
        helm, "--set-string", f"gateway.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}"
    )
    account = next(
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "tw-tollway-gateway"
    )
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE}
    # With EKS's webhook the chart adds no token of its own (the webhook mounts one).
    spec = _gateway_pod(docs)
    assert all(v["name"] != "aws-web-identity" for v in spec["volumes"])
    assert not {"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"} & {e["name"] for e in _sidecar(spec)["env"]}


def test_without_the_webhook_the_sidecar_gets_a_projected_sts_token(helm: str) -> None:
    spec = _gateway_pod(
        _render(
            helm,
            "--set",
            "gateway.aws.webIdentity.enabled=true",
            "--set",
            f"gateway.aws.webIdentity.roleARN={ROLE}",
            "--set",
            "gateway.aws.webIdentity.expirationSeconds=3600",
        )
    )
    (volume,) = [v for v in spec["volumes"] if v["name"] == "aws-web-identity"]
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"] == {
        "audience": "sts.amazonaws.com",
        "expirationSeconds": 3600,
        "path": "token",
    }
    sidecar = _sidecar(spec)
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    assert env["AWS_ROLE_ARN"] == ROLE
    (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == "aws-web-identity"]
    assert (mount["mountPath"], mount["readOnly"]) == (TOKEN_DIR, True)
    envoy = next(c for c in spec["containers"] if c["name"] == "envoy")
    assert all(m["name"] != "aws-web-identity" for m in envoy["volumeMounts"])


def test_no_role_leaves_each_backend_to_name_its_own(helm: str) -> None:
    spec = _gateway_pod(_render(helm, "--set", "gateway.aws.webIdentity.enabled=true"))
    names = {e["name"] for e in _sidecar(spec)["env"]}
    assert "AWS_WEB_IDENTITY_TOKEN_FILE" in names and "AWS_ROLE_ARN" not in names


def test_the_schema_refuses_a_role_that_is_no_iam_role_arn(helm: str) -> None:
    result = template(helm, "--set", "gateway.aws.webIdentity.roleARN=tollway-gateway")
    assert result.returncode != 0
    assert "roleARN" in result.stderr


def test_the_examples_values_render(helm: str) -> None:
    eks = _render(helm, "-f", str(ROOT / "examples" / "bedrock" / "chart" / "values-eks.yaml"))
    account = next(
        d for d in eks if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "tw-tollway-gateway"
    )
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/tollway-bedrock")
    oidc = _gateway_pod(
        _render(helm, "-f", str(ROOT / "examples" / "bedrock" / "chart" / "values-oidc.yaml"))
    )
    assert any(v["name"] == "aws-web-identity" for v in oidc["volumes"])
