"""cluster.yaml is checked against the autoscaler schema that ships with the pinned Ray."""

from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_autoscaler_config():
    import json

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    head = config["available_node_types"][config["head_node_type"]]
    assert "GPU" not in head["node_config"]["InstanceType"] and head.get("resources", {}).get("GPU", 0) == 0
    workers = [n for name, n in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(n["min_workers"] == 0 for n in workers), "GPU workers autoscale from zero"
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-") and "-gpu" in config["docker"]["image"]
