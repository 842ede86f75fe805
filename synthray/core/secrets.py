"""Secrets are read where they are used: from the environment of the process that needs them.

On a cluster, every node's Ray processes get them at start from the cloud's secret store (cluster.yaml: AWS SSM
Parameter Store under /synthray/; cluster-gcp.yaml: Secret Manager secrets named synthray-<name>), through the
node's own role. `synthray submit` sends none unless named with --send-secrets, since Ray keeps a job's
environment in plain text in its job table and its logs. A secret is never in a config, a key, a log line or
storage: only its name is.
"""

from __future__ import annotations

import os

from synthray.core.registry import SynthrayError

STORE_HINT = ("put it in the cluster's secret store (AWS: SSM parameter /synthray/{name}; GCP: secret "
              "synthray-{slug}; README, \"Secrets\"), which every node reads when it starts")


def where_this_runs() -> str:
    """'on the cluster's head' in a submitted job's driver (Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR), else here."""
    return "on the cluster's head" if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else "on this machine"


def missing_secret(name: str, why: str, otherwise: str = "") -> SynthrayError:
    """The one line for a secret `name` that `why` needs and this process's environment lacks; `otherwise`: the
    other ways out (another setting), appended."""
    hint = STORE_HINT.format(name=name, slug=name.lower().replace("_", "-"))
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        hint = f"export it here, or on a cluster {hint}"
    return SynthrayError(f"{why} needs ${name}, which is not set {where_this_runs()}; {hint}" + (f"; {otherwise}" if otherwise else ""))


def require_secret(name: str, why: str, otherwise: str = "") -> None:
    if not os.environ.get(name):
        raise missing_secret(name, why, otherwise)


def private_host(host: str) -> bool:
    """Whether `host` is this machine or on a private network (loopback, RFC 1918, link-local, a ULA), so plain
    http to it does not cross the internet. A name other than localhost counts as public: it is not resolved."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def safe_to_send_secrets(url: str) -> bool:
    """https, or plain http to a private host (`private_host`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and private_host(parts.hostname or ""))
