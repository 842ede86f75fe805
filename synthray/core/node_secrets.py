"""Fetch the cluster's secrets on a node, from the cloud's secret store, for the Ray processes it starts.

The cluster files run, in the shell that then runs `ray start`:

    eval "$(python -m synthray.core.node_secrets aws HF_TOKEN OPENAI_API_KEY WANDB_API_KEY)"

It prints one `export NAME=<value>` line per secret found, shell-quoted, and nothing else on stdout; the values go
from the store into that shell's environment, and from there to every Ray process of the node, never into a file,
a command line, Ray's job table or a log. Names it cannot find are listed on stderr (names only), and a store
that cannot be read is one line on stderr: the node still starts, and synthray's check before a sweep names any
secret the sweep needs and lacks.

Where each cloud keeps them, read with the node's own role (no key is stored anywhere):
- aws: SSM Parameter Store, SecureString parameters `/synthray/<NAME>` (`ssm:GetParameters` on
  `arn:aws:ssm:<region>:<account>:parameter/synthray/*`). boto3 is the client; `AWS_ENDPOINT_URL` works as for S3.
- gcp: Secret Manager, secrets `synthray-<name>` (lower case, `-` for `_`), latest version
  (`roles/secretmanager.secretAccessor` on those secrets). The node's token comes from the metadata server;
  `GCE_METADATA_HOST` and `SYNTHRAY_SECRET_MANAGER_URL` point elsewhere (tests).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

PREFIX = "/synthray/"


def gcp_secret_name(name: str) -> str:
    return "synthray-" + name.lower().replace("_", "-")


def from_aws(names: Sequence[str]) -> dict[str, str]:
    import boto3

    client = boto3.client("ssm", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_SSM") or os.environ.get("AWS_ENDPOINT_URL"))
    found: dict[str, str] = {}
    for start in range(0, len(names), 10):  # GetParameters takes ten names a call
        answer = client.get_parameters(Names=[PREFIX + n for n in names[start:start + 10]], WithDecryption=True)
        found.update({p["Name"][len(PREFIX):]: p["Value"] for p in answer["Parameters"]})
    return found


def _get(url: str, headers: dict[str, str]) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
        return answer.read()


def from_gcp(names: Sequence[str]) -> dict[str, str]:
    metadata = "http://" + os.environ.get("GCE_METADATA_HOST", "metadata.google.internal") + "/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}
    project = _get(f"{metadata}/project/project-id", flavor).decode().strip()
    token = json.loads(_get(f"{metadata}/instance/service-accounts/default/token", flavor))["access_token"]
    api = os.environ.get("SYNTHRAY_SECRET_MANAGER_URL", "https://secretmanager.googleapis.com")
    found: dict[str, str] = {}
    for name in names:
        url = f"{api}/v1/projects/{project}/secrets/{gcp_secret_name(name)}/versions/latest:access"
        try:
            payload = json.loads(_get(url, {"Authorization": f"Bearer {token}"}))["payload"]["data"]
        except urllib.error.HTTPError as err:
            if err.code == 404:
                continue
            raise
        found[name] = base64.b64decode(payload).decode()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("aws", "gcp"):
        print("usage: python -m synthray.core.node_secrets aws|gcp NAME...", file=sys.stderr)
        return 2
    cloud, names = args[0], args[1:]
    try:
        found = (from_aws if cloud == "aws" else from_gcp)(names)
    except Exception as err:  # noqa: BLE001 - any failure: the node starts without them, and says why in one line
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"synthray: no secrets from the {cloud} secret store on this node: {why}", file=sys.stderr)
        return 0
    for name in names:
        if name in found:
            print(f"export {name}={shlex.quote(found[name])}")
    missing = [n for n in names if n not in found]
    if missing:
        print(f"synthray: not in the {cloud} secret store (left unset): {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
