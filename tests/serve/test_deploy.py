"""deploy/: the Dockerfile and the KServe manifests start the server the way its CLI expects.

No cluster or Docker daemon is needed: the checks are that the files the image copies exist,
that the container's command line parses with ``tinyinfer serve``'s own parser, and that the
InferenceService asks for the runtime and model format the ServingRuntime declares.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tinyinfer.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_dockerfile_copies_real_files_and_runs_tinyinfer_serve():
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (DEPLOY.parent / source).exists(), source
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    command = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entrypoint == ["tinyinfer", "serve"]
    args = build_parser().parse_args(entrypoint[1:] + command)
    assert (args.repository, args.host, args.http_port, args.grpc_port) == ("/mnt/models", "0.0.0.0", 8000, 8001)
    assert '".[serve]"' in text  # the image installs the serving extra


def test_serving_runtime_container_parses_and_probes_v2_health():
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    assert runtime["kind"] == "ServingRuntime" and set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    container = runtime["spec"]["containers"][0]
    args = build_parser().parse_args(["serve", *container["args"]])
    assert args.http_port == container["ports"][0]["containerPort"] == 8080  # KServe's HTTP port
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_inference_service_uses_the_runtime_and_its_format():
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert service["spec"]["predictor"]["minReplicas"] >= 2
