"""The cluster configs (cluster.yaml on AWS, cluster-gcp.yaml on GCP) and the one pinned constraints file they install
against (constraints/cluster.txt).

Offline and fast: no network, no cloud API. First Ray's own preparation and validation of each config, then the
rules the configs promise: nothing listens on all interfaces, token auth everywhere, GPU workers from zero on spot
with an on-demand fallback, a CPU head, the GPU image of our Ray, every pip install pinned, GPU tiers labelled for
placement.by=labels, and nodes that install the wheel of scripts/build-wheel.sh, never the working folder.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
from functools import lru_cache
from pathlib import Path

import pytest
import ray
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ["cluster.yaml", "cluster-gcp.yaml"]
CONSTRAINTS = ROOT / "constraints" / "cluster.txt"
# Every command list a config can carry; each must be set in our files, or Ray's defaults.yaml fills it in (with an
# unpinned `pip install` and a dashboard on all interfaces).
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


@lru_cache
def _text(name: str) -> str:
    return (ROOT / name).read_text()


def raw(name: str) -> dict:
    return copy.deepcopy(yaml.safe_load(_text(name)))


@lru_cache
def _prepared(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(raw(name))


def prepared(name: str) -> dict:
    return copy.deepcopy(_prepared(name))


def head_and_workers(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = config["head_node_type"]
    return types[head], {k: v for k, v in types.items() if k != head}


def is_aws(config: dict) -> bool:
    return config["provider"]["type"] == "aws"


def is_spot(config: dict, node_type: dict) -> bool:
    node = node_type["node_config"]
    if is_aws(config):
        return node.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node.get("scheduling", {})
    if isinstance(scheduling, list):  # Ray's own GCP examples write it as a list of one-key maps
        scheduling = {k: v for item in scheduling for k, v in item.items()}
    return scheduling.get("provisioningModel") == "SPOT" or bool(scheduling.get("preemptible"))


def machine(config: dict, node_type: dict) -> str:
    return node_type["node_config"]["InstanceType" if is_aws(config) else "machineType"]


def the_ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if re.search(r"\bray start\b", c)]
    assert len(starts) == 1, f"expected one `ray start` command, got {starts}"
    return starts[0]


def pip_installs(config: dict) -> list[list[str]]:
    """The argument lists of every `pip install` in any command list of `config` (split at shell separators)."""
    found = []
    for key in COMMAND_LISTS:
        for command in config.get(key, []):
            for part in re.split(r"&&|\|\||;|\n", command):
                if re.search(r"\bpip3?\s+install\b", part):
                    found.append(shlex.split(part))
    for node_type in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            for command in node_type.get(key, []):
                for part in re.split(r"&&|\|\||;|\n", command):
                    if re.search(r"\bpip3?\s+install\b", part):
                        found.append(shlex.split(part))
    return found


def constraint_files(args: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--constraint") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--constraint="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("-c") and len(arg) > 2:
            files.append(arg[2:])
    return files


def pins() -> dict[str, str]:
    """The constraints file as {canonical name: version}; every line must be an exact `name==version` pin."""
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints/cluster.txt: '{line}' is not an exact name==version pin"
        name = canonicalize_name(match.group(1))
        assert name not in out, f"constraints/cluster.txt pins {name} twice"
        out[name] = match.group(2)
    return out


def local_path(config: dict, remote: str) -> Path | None:
    """The laptop path that file_mounts copies to `remote` on a node (a mounted file, or a path in a mounted folder)."""
    for mount, local in config["file_mounts"].items():
        mount = mount.rstrip("/")
        if remote == mount:
            return ROOT / Path(local).expanduser()
        if remote.startswith(mount + "/"):
            return ROOT / Path(local).expanduser() / Path(remote).relative_to(mount)
    return None


@pytest.fixture(params=CLUSTER_FILES)
def name(request) -> str:
    return request.param


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a cluster config check tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# 1. Ray's own checks.


def test_passes_rays_prepare_config_and_validate_config(name, offline):
    """What `ray up` does with the file, minus the steps that need the cloud.

    `ray up` (commands._bootstrap_config) runs prepare_config, then the provider's
    fillout_available_node_types_resources (AWS: EC2 DescribeInstanceTypes; GCP: TPU fields only, and its module
    needs googleapiclient), then validate_config, then the provider's bootstrap_config (AWS: IAM, key pair, subnets,
    security groups, AMI; GCP: project, service account, key pair, subnet), all of which call the cloud. Only the two
    provider steps are skipped here; they cannot run offline. prepare_config itself is offline: it merges the
    provider's defaults.yaml shipped with Ray (read from disk), merges setup commands, checks the docker section and
    fills per-type worker counts, and this test fails if it opens a connection. Our node types declare their
    resources, so the skipped fill-out step would change nothing that validate_config checks.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = raw(name)
    missing = [key for key in COMMAND_LISTS if key not in config]
    assert not missing, f"{name} leaves {missing} to Ray's defaults"
    ready = prepare_config(config)
    validate_config(ready)
    assert ready["head_setup_commands"] == config["setup_commands"] + config["head_setup_commands"]
    assert ready["worker_setup_commands"] == config["setup_commands"] + config["worker_setup_commands"]
    assert ready["available_node_types"][ready["head_node_type"]]["max_workers"] == 0


# 2. Security and scheduling.


def test_nothing_listens_on_all_interfaces(name):
    assert "0.0.0.0" not in _text(name)
    assert "0.0.0.0" not in json.dumps(prepared(name)), "a Ray default brought 0.0.0.0 back"


def test_dashboard_and_job_api_on_the_heads_loopback_only(name):
    start = the_ray_start(prepared(name)["head_start_ray_commands"])
    assert "--head" in start
    assert re.findall(r"--dashboard-host[= ](\S+)", start) == ["127.0.0.1"]


def test_token_auth_on_head_and_workers(name):
    config = prepared(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = the_ray_start(config[key])
        assert "RAY_AUTH_MODE=token" in start, f"{key}: `ray start` without RAY_AUTH_MODE=token"
        assert start.index("RAY_AUTH_MODE=token") < start.index("ray start"), f"{key}: set before `ray start`"
    # Every node gets Ray's token file from the laptop's (file_mounts); the token itself is never in the config.
    assert config["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", _text(name))


def test_every_node_reads_the_secrets_from_its_clouds_store_before_ray_starts(name):
    """Secrets reach Ray's processes from the cloud's secret store, through the node's role: never from the file,
    a job's runtime env or a key file. GCP: both node kinds run as a narrowed account of their own (Ray's default
    head account has project-wide compute.admin, storage.objectAdmin and serviceAccountUser)."""
    config = prepared(name)
    cloud = "aws" if is_aws(config) else "gcp"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = the_ray_start(config[key])
        fetch = f'eval "$(python -m synthray.core.node_secrets {cloud} '
        assert fetch in start and start.index(fetch) < start.index("ray start"), key
        for secret in ("HF_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY"):
            assert secret in start.split(fetch, 1)[1].split(")", 1)[0], (key, secret)
    assert not re.search(r"(HF_TOKEN|OPENAI_API_KEY|WANDB_API_KEY|AWS_SECRET_ACCESS_KEY)\s*[=:]\s*\S", _text(name))
    if cloud == "gcp":
        head, workers = head_and_workers(config)
        emails = {k: [a["email"] for a in t["node_config"].get("serviceAccounts", [])]
                  for k, t in config["available_node_types"].items()}
        assert emails[config["head_node_type"]] == ["synthray-head@REPLACE_ME-project-id.iam.gserviceaccount.com"]
        assert all(emails[k] == ["synthray-worker@REPLACE_ME-project-id.iam.gserviceaccount.com"] for k in workers)
        for role in ("roles/compute.instanceAdmin.v1", "roles/iam.serviceAccountUser", "roles/storage.objectAdmin",
                     "roles/secretmanager.secretAccessor"):
            assert role in _text(name), role
    else:
        assert "ssm:GetParameters" in _text(name) and "parameter/synthray/*" in _text(name)


def test_gpu_workers_start_from_zero_on_spot_with_an_on_demand_fallback(name):
    config = prepared(name)
    _, workers = head_and_workers(config)
    assert workers
    for key, node_type in workers.items():
        assert node_type.get("resources", {}).get("GPU", 0) >= 1, f"{key}: declare its GPUs to scale up from zero"
        assert node_type["min_workers"] == 0, f"{key}: GPU workers start from zero"
    spot = {k: v for k, v in workers.items() if is_spot(config, v)}
    on_demand = {k: v for k, v in workers.items() if not is_spot(config, v)}
    assert spot and on_demand
    for key, node_type in spot.items():
        fallbacks = [k for k, v in on_demand.items()
                     if machine(config, v) == machine(config, node_type) and v["resources"] == node_type["resources"]]
        assert fallbacks, f"{key}: no on-demand type of the same machine to fall back to"
        for fallback in fallbacks:  # autoscaler v2 prefers the higher priority among equal fits
            assert on_demand[fallback].get("priority", 0) < node_type.get("priority", 0), (key, fallback)


def test_head_has_no_gpu(name):
    config = prepared(name)
    head, _ = head_and_workers(config)
    assert head["resources"].get("GPU") == 0, "declare GPU: 0 so no GPU request is ever placed on the head"
    node = head["node_config"]
    if is_aws(config):
        assert not re.match(r"(g|gr|p|inf|trn|dl)\d", node["InstanceType"]), node["InstanceType"]
    else:
        assert not node.get("guestAccelerators")
        assert not re.match(r"(a\d|g\d|ct\d|tpu)", node["machineType"]), node["machineType"]


def test_docker_image_is_the_gpu_image_of_our_ray(name):
    config = prepared(name)
    image = config["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3\d+-gpu", image), image
    assert "ray-ml" not in _text(name).replace("ray-ml is discontinued", "")
    assert not {"head_image", "worker_image"} & set(config["docker"])
    for node_type in config["available_node_types"].values():
        assert "worker_image" not in node_type.get("docker", {})
    assert any(opt.startswith("--shm-size") for opt in config["docker"]["run_options"])


def test_every_pip_install_uses_the_constraints_file(name):
    config = prepared(name)
    installs = pip_installs(config)
    assert installs, "the project is installed on every node"
    for args in installs:
        files = constraint_files(args)
        assert files, f"pip install without -c: {shlex.join(args)}"
        for remote in files:
            # The node's path maps back, through file_mounts, to constraints/cluster.txt in this repository.
            local = local_path(config, remote)
            assert local and local.resolve() == CONSTRAINTS.resolve(), remote
        packages = [a for a in args if not a.startswith("-") and a not in files and a not in ("pip", "pip3", "install")]
        assert not [p for p in packages if re.match(r"torch\b", p)], f"torch must come from the pin: {shlex.join(args)}"
    assert not re.search(r"pip3?\s+install[^\n;&|]*\btorch\b", _text(name)), "no bare `pip install torch`"
    assert not any("-e" in args or "--editable" in args for args in installs), "nodes install the wheel, not a folder"


def test_nodes_use_only_the_network_rules_the_file_documents(name):
    """Ray would otherwise pick the network itself: on AWS a group it creates, with SSH open to every address; on
    GCP the project's first subnet, whose default firewall opens SSH to every address too."""
    config = prepared(name)
    for key, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        if is_aws(config):
            assert node.get("SecurityGroupIds"), f"{key}: name the cluster's security group"
        else:
            assert all(nic.get("subnetwork") for nic in node.get("networkInterfaces", [])) and node.get(
                "networkInterfaces"), f"{key}: name the cluster's subnet"
            assert node.get("tags", {}).get("items"), f"{key}: the firewall rules match a network tag"
    assert "security_group" not in config["provider"]
    assert "--port 22" in _text(name) or "tcp:22" in _text(name), "document the SSH-only inbound rule"


def test_nodes_get_a_current_gpu_driver_bucket_access_and_node_local_scratch(name):
    config = prepared(name)
    head, workers = head_and_workers(config)
    for key, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        if is_aws(config):
            # Ray replaces an empty ImageId (or "latest_dlami") with its default AMI, whose driver is too old.
            assert node.get("ImageId", "").lower() not in ("", "latest_dlami"), key
            assert node.get("IamInstanceProfile"), f"{key}: S3 access through an instance profile"
        else:
            boot = [d for d in node["disks"] if d.get("boot")]
            assert boot[0]["initializeParams"]["sourceImage"].startswith(
                "projects/deeplearning-platform-release/global/images/family/"), key
            if node_type is not head:
                scopes = [s for account in node.get("serviceAccounts", []) for s in account["scopes"]]
                assert any(s.endswith(("/devstorage.read_write", "/devstorage.full_control", "/cloud-platform"))
                           for s in scopes), f"{key}: a service account with storage scope"
    env = dict(opt[3:].split("=", 1) for opt in config["docker"]["run_options"] if opt.startswith("-e "))
    scratch = env["SYNTHRAY_SCRATCH"]
    assert env["HF_HOME"].startswith(scratch + "/")
    assert env["RAY_AUTH_MODE"] == "token"
    volumes = [opt[3:].split(":")[1] for opt in config["docker"]["run_options"] if opt.startswith("-v ")]
    assert any(scratch.startswith(v.rstrip("/") + "/") for v in volumes), "the scratch folder lives on the VM's disk"
    assert any(scratch.rsplit("/", 1)[0] in c for c in config["initialization_commands"]), "scratch is set up"


# 3. The constraints file.


def test_constraints_pin_our_ray_and_every_direct_dependency():
    pinned = pins()
    assert pinned["ray"] == ray.__version__
    assert {"torch", "torchvision"} <= set(pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in project:
        requirement = Requirement(text)
        key = canonicalize_name(requirement.name)
        assert key in pinned, f"{requirement.name} is a dependency but not pinned in constraints/cluster.txt"
        assert requirement.specifier.contains(pinned[key], prereleases=True), (
            f"constraints/cluster.txt pins {key}=={pinned[key]}, outside pyproject.toml's {text!r}")


# 4. GPU tiers: node labels that placement.by=labels selects on.

LABEL = "synthray.io/gpu-memory-gb"  # the key and values the placement code matches on (a fixed contract)
TIERS = {"24", "40", "48", "80", "141"}


def test_every_gpu_type_carries_its_memory_tier_as_a_valid_ray_label(name):
    from ray._private.label_utils import validate_label_key, validate_label_value, validate_node_labels

    config = prepared(name)
    head, workers = head_and_workers(config)
    assert not head.get("labels", {}).get(LABEL), "the head has no GPU, so no tier"
    for key, node_type in workers.items():
        labels = node_type.get("labels", {})
        assert labels.get(LABEL) in TIERS, f"{key}: {LABEL} must be one of {sorted(TIERS, key=int)}, got {labels}"
        validate_node_labels(labels)  # raises on a key in Ray's reserved ray.io/ prefix
        for label, value in labels.items():
            assert validate_label_key(label) is None, validate_label_key(label)
            assert validate_label_value(value) is None, validate_label_value(value)
    tiers = {v["labels"][LABEL] for v in workers.values()}
    assert {"24", "80", "141"} <= tiers and tiers & {"40", "48"}, f"{name}: 24, 40-48, 80 and H100/H200 tiers: {tiers}"


def test_every_tier_has_a_spot_type_and_a_cheaper_to_skip_on_demand_twin(name):
    config = prepared(name)
    _, workers = head_and_workers(config)
    by_tier: dict[str, dict[str, list[dict]]] = {}
    for node_type in workers.values():
        market = "spot" if is_spot(config, node_type) else "on-demand"
        by_tier.setdefault(node_type["labels"][LABEL], {}).setdefault(market, []).append(node_type)
    for tier, markets in by_tier.items():
        assert set(markets) == {"spot", "on-demand"}, f"tier {tier}: {sorted(markets)}"
        assert min(t.get("priority", 0) for t in markets["spot"]) > max(t.get("priority", 0) for t in markets["on-demand"])


# 5. Nothing on a node comes from the working folder.


def test_no_node_gets_the_working_folder_or_an_environment(name):
    """A folder mount is hashed file by file at every `ray up`; the working folder (with .venv and synthray-runs) would
    change that hash with every local run and restart Ray on the head."""
    config = raw(name)
    for remote, local in config["file_mounts"].items():
        path = (ROOT / Path(local).expanduser()).resolve()
        assert path != ROOT.resolve() and not ROOT.resolve().is_relative_to(path), f"{remote}: mounts {local}"
        assert not path.is_relative_to(ROOT / ".venv") and ".venv" not in Path(local).parts, remote
        if path.is_relative_to(ROOT) and path.is_dir():
            assert not (path / ".venv").exists() and not (path / "synthray").is_dir(), f"{remote}: {local} holds a project"
    project = [local for local in config["file_mounts"].values() if not local.startswith("~")]
    assert sorted(project) == ["constraints/cluster.txt", "dist/cluster"], project  # a pin file; build-wheel.sh's wheel
    assert "rsync_exclude" not in config and "rsync_filter" not in config, "nothing left to filter"


def test_nodes_install_the_built_wheel_with_the_tracking_extra(name):
    config = prepared(name)  # setup_commands run on the head and on every worker (prepare_config merges them in)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert config[key][0] == raw(name)["setup_commands"][0], key
    installs = [args for args in pip_installs(raw(name)) if any("synthray" in a and ".whl" in a for a in args)]
    assert len(installs) == 1, installs
    (wheel,) = [a for a in installs[0] if ".whl" in a]
    assert wheel.endswith("[tracking]"), wheel
    folder = wheel.split("$(echo ", 1)[1].rsplit("/", 1)[0]
    assert local_path(config, folder) == ROOT / "dist" / "cluster", folder
    script = (ROOT / "scripts" / "build-wheel.sh").read_text()
    assert "dist/cluster" in script and "git archive" in script


def test_the_tracking_extra_is_pinned_for_the_cluster():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tracking"]
    names = {canonicalize_name(Requirement(r).name) for r in extras}
    assert {"mlflow-skinny", "wandb"} <= names
    pinned = pins()
    for text in extras:
        requirement = Requirement(text)
        key = canonicalize_name(requirement.name)
        assert key in pinned and requirement.specifier.contains(pinned[key], prereleases=True), text
