"""The captioner stage: the tiny Qwen2-VL twin on a Ray Data pool, and the openai backend against a stub endpoint
on 127.0.0.1 that checks every request (key, model, instruction, a JPEG with a 256 px short side), throttles and
fails on purpose, and records what it was asked."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from synthray.core.artifacts import DatasetRef
from synthray.core.images import read_images
from synthray.core.registry import SynthrayError
from synthray.graph.captions import caption, captioner_section, captions_artifact, read_captions
from synthray.graph.real import real_artifact, real_data
from synthray.prompts.backends import CAPTIONERS, Secret, prepare_image
from synthray.prompts.captions import select_images
from tests.conftest import tiny_cfg

INSTRUCTION = ("You are an expert image captioning model. You will write a detailed 5-6 sentence caption that describes "
               "background, foreground, objects and camera angle of the image.")  # the study's, copied by hand
KEY = "sk-test-0123456789abcdef"
LOCAL = ["captioner.backend=local", "captioner.local.model=tiny:captioner", "captioner.per_class=2",
         "captioner.max_tokens=6", "captioner.batch_size=4", "captioner.shard_size=8"]


class Stub:
    """What the stub endpoint does and saw. `plan(n)` gives the n-th request (1-based) a status to answer first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.log: list[tuple[float, str, int]] = []  # (arrival time, sha256 of the JPEG, status answered)
        self.problems: list[str] = []
        self.plan: dict[int, tuple[int, dict]] = {}
        self.fail_after: int | None = None  # answer 400 to everything once this many captions succeeded
        self.always: int | None = None

    def reset(self):
        with self.lock:
            self.log.clear()
            self.problems.clear()
            self.plan, self.fail_after, self.always = {}, None, None

    def ok(self, digest: str) -> list[int]:
        return [s for _, d, s in self.log if d == digest]


def _handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self, status: int, body: dict, headers: dict | None = None):
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            arrived = time.monotonic()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {KEY}":
                with stub.lock:
                    stub.log.append((arrived, "?", 401))
                # OpenAI's answer shows the key's ends, as here
                return self._answer(401, {"error": {"message": f"Incorrect API key provided: {auth[7:11]}****{auth[-4:]}"}})
            problems, digest = [], "?"
            try:
                text, image = body["messages"][0]["content"]
                if self.path != "/v1/chat/completions" or body["model"] != "gpt-4.1-nano" or text["text"] != INSTRUCTION:
                    problems.append(f"path {self.path}, model {body['model']}, instruction {text['text'][:30]}")
                url = image["image_url"]["url"]
                assert url.startswith("data:image/jpeg;base64,")
                jpeg = base64.b64decode(url.split(",", 1)[1])
                digest = hashlib.sha256(jpeg).hexdigest()
                with Image.open(io.BytesIO(jpeg)) as im:
                    if im.format != "JPEG" or min(im.size) != 256:
                        problems.append(f"image {im.format} {im.size}")
            except Exception as err:  # noqa: BLE001
                problems.append(repr(err))
            with stub.lock:
                n = len(stub.log) + 1
                succeeded = sum(1 for *_, s in stub.log if s == 200)
                status, headers = stub.plan.get(n, (200, {}))
                if stub.always:
                    status = stub.always
                if stub.fail_after is not None and succeeded >= stub.fail_after:
                    status = 400
                if problems:
                    stub.problems += problems
                    status = 400
                stub.log.append((arrived, digest, status))
            if status != 200:
                return self._answer(status, {"error": {"message": f"planned {status}"}}, headers)
            self._answer(200, {"choices": [{"message": {"role": "assistant", "content": f"  a digit, {digest[:8]}.\n"}}]})

    return Handler


@pytest.fixture(scope="module")
def stub():
    state = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def openai_args(stub: Stub, *more: str) -> list[str]:
    return ["captioner.backend=openai", f"captioner.openai.base_url={stub.url}", "captioner.openai.backoff_s=0.01",
            "captioner.openai.requests_per_minute=6000", *more]


def expected_digests(cfg) -> list[str]:
    real = real_data(cfg)
    train = read_images(DatasetRef(real, "train").uri)
    chosen = select_images(train, captioner_section(cfg)["per_class"])
    c = captioner_section(cfg)
    return [hashlib.sha256(prepare_image(b, c["min_side"], c["jpeg_quality"])).hexdigest() for b in chosen["image"]]


def test_the_instruction_is_the_studys():
    assert captioner_section(tiny_cfg("/nowhere"))["instruction"] == INSTRUCTION


def test_preprocessing_follows_the_study():
    """Short side to 256 with Lanczos, up or down, the long side truncated; JPEG q95 with Pillow's defaults."""
    def jpeg(size):
        buf = io.BytesIO()
        Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
        return prepare_image(buf.getvalue())

    for size, want in [((32, 32), (256, 256)), ((40, 30), (341, 256)), ((600, 1000), (256, 426)), ((256, 300), (256, 300))]:
        with Image.open(io.BytesIO(jpeg(size))) as im:
            assert im.format == "JPEG" and im.size == want
    img = Image.new("RGB", (300, 500), (1, 2, 3))
    buf = io.BytesIO()
    img.resize((256, 426), Image.LANCZOS).save(buf, format="JPEG", quality=95)
    src = io.BytesIO()
    img.save(src, format="PNG")
    assert prepare_image(src.getvalue()) == buf.getvalue()


def test_openai_backend_retries_throttling_and_errors_and_keeps_its_rate(stub):
    """429 (with and without Retry-After) and 500 are retried; starts are spaced by the pool's share of the limit."""
    stub.reset()
    cfg = tiny_cfg("/nowhere", *openai_args(stub, "captioner.openai.requests_per_minute=1200", "captioner.openai.concurrency=3"))
    c = captioner_section(cfg)
    backend = CAPTIONERS.get("openai")(c, INSTRUCTION, None, "cpu", Secret(KEY), 2)  # 2 actors share 1200/min
    assert KEY not in repr(Secret(KEY)) and KEY not in repr(c)
    images = [prepare_image(_png(i)) for i in range(6)]
    stub.plan = {1: (429, {"Retry-After": "1"}), 3: (500, {}), 4: (429, {})}
    start = time.monotonic()
    out = backend(images)
    assert stub.problems == []
    digests = [hashlib.sha256(j).hexdigest() for j in images]
    assert out == [f"a digit, {d[:8]}." for d in digests]
    assert sorted(s for *_, s in stub.log) == [200] * 6 + [429, 429, 500]
    first = stub.log[0]
    retried = [t for t, d, s in stub.log if d == first[1] and s == 200]
    assert retried[0] - first[0] >= 0.95, "Retry-After: 1 is honoured"
    times = sorted(t for t, *_ in stub.log)
    assert times[-1] - times[0] >= (len(times) - 1) * 0.1 * 0.9, "600/min per actor: starts 0.1 s apart"
    assert time.monotonic() - start < 10


def test_openai_backend_errors_are_one_line_and_never_show_the_key(stub):
    stub.reset()
    c = captioner_section(tiny_cfg("/nowhere", *openai_args(stub, "captioner.openai.max_attempts=3")))
    jpeg = prepare_image(_png(0))
    wrong = CAPTIONERS.get("openai")(c, INSTRUCTION, None, "cpu", Secret("sk-wrong-key-zyxw"), 1)
    [err] = wrong([jpeg])
    assert isinstance(err, SynthrayError) and "answered HTTP 401: Incorrect API key provided: sk-***" in str(err)
    assert "zyxw" not in str(err) and len(stub.log) == 1, "a 401 is not retried"
    stub.reset()
    stub.always = 503
    [err] = CAPTIONERS.get("openai")(c, INSTRUCTION, None, "cpu", Secret(KEY), 1)([jpeg])
    assert str(err) == f"3 attempts to POST {stub.url}/chat/completions failed; last: HTTP 503: planned 503"
    assert len(stub.log) == 3
    stub.reset()
    c["openai"]["base_url"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    [err] = CAPTIONERS.get("openai")(c, INSTRUCTION, None, "cpu", Secret(KEY), 1)([jpeg])
    assert "3 attempts to POST http://127.0.0.1:9/chat/completions failed; last: URLError" in str(err)


@pytest.mark.slow
def test_openai_stage_resumes_without_asking_twice(ray_cluster, shared_storage, stub, monkeypatch, tmp_path):
    """A run that fails hard after 10 captions, then a rerun: every image is captioned exactly once."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = tiny_cfg(tmp_path / "runs", *openai_args(stub, "captioner.per_class=3", "captioner.shard_size=16",
                                                   "captioner.batch_size=4", "captioner.openai.concurrency=2"))
    want = expected_digests(cfg)
    assert len(set(want)) == len(want) == 30
    art = captions_artifact(cfg, real_artifact(cfg))
    assert art.spec["model"] == {"api": "chat-completions", "name": "gpt-4.1-nano"}
    assert stub.url not in json.dumps(art.spec) and KEY not in json.dumps(art.spec)
    stub.reset()
    stub.plan = {2: (429, {"Retry-After": "0"}), 5: (500, {})}
    stub.fail_after = 10
    with pytest.raises(SynthrayError) as err:
        caption(cfg)
    line = str(err.value)
    assert "\n" not in line and "HTTP 400: planned 400" in line and "will not be asked for again" in line
    assert not art.is_complete() and (tmp_path / "runs" / art.ref / "progress").is_dir()
    first = [d for _, d, s in stub.log if s == 200]
    assert len(first) >= 10
    stub.fail_after = None
    n_before = len(stub.log)
    caption(cfg)
    assert stub.problems == []
    assert Counter(d for _, d, s in stub.log if s == 200) == Counter(want), "each image captioned once"
    again = {d for _, d, _ in stub.log[n_before:]}
    assert not again & set(first), "no image that had its caption was asked for again"
    assert art.is_complete() and art.verify() == [] and not (tmp_path / "runs" / art.ref / "progress").exists()
    table = read_captions(cfg)
    assert len(table) == 30 and table["caption"].str.startswith("a digit, ").all()
    assert KEY not in (tmp_path / "runs" / art.ref / "meta.json").read_text()


@pytest.mark.slow
def test_local_twin_captions_every_chosen_image_on_ray_data(ray_cluster, shared_storage, capsys):
    from synthray.cli import main

    cfg = tiny_cfg(shared_storage, *LOCAL)
    art = caption(cfg)
    table = read_captions(cfg)
    train = read_images(DatasetRef(real_artifact(cfg), "train").uri, columns=["id", "class_id"])
    assert list(table["id"]) == list(train.groupby("class_id", sort=False).head(2)["id"])
    assert (table["caption"].str.len() > 0).all() and table.groupby("class_id").size().eq(2).all()
    assert art.spec["model"] == {"tiny": "captioner", "version": 1}
    assert art.spec["params"] == {"decoding": "greedy", "max_tokens": 6, "dtype": "float32", "batch_size": 4}
    built = art.manifest()
    assert main(["caption", f"storage={shared_storage}", *LOCAL]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"captions: {art.file('data')} (20 rows, local)"
    assert art.manifest() == built, "reused, not rebuilt"


@pytest.mark.slow
def test_caption_prompts_come_from_the_captioner(ray_cluster, shared_storage):
    """Planning names the captions artifact and captions nothing; the trial builds the table from the captions."""
    from synthray.graph.synthetic import build_prompt_table, captioned_prompt_table
    from synthray.sweep.trial import plan_trials

    cfg = tiny_cfg(shared_storage, *LOCAL, "prompts.captions=captioner", "prompts.n_per_class=2",
                   "grid.prompt_style=[caption]", "grid.generator=[tiny-sd]")
    [trial] = plan_trials(cfg)
    art = captions_artifact(cfg, trial.real)
    assert trial.table is None and trial.synthetic.spec["prompts"] == {
        "captions": art.key, "template": "{name}, {caption}", "n_per_class": 2,
        "names": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]}
    table = captioned_prompt_table(cfg, "tiny-sd", "caption", real_data(cfg))
    caps = read_captions(cfg).set_index("id")
    assert len(table) == 20
    for _, row in table.iterrows():
        image_id = row["prompt_id"].split("/", 1)[1]  # <class id>/<real image id>
        assert row["prompt"] == f"{row['class_name']}, {caps.loc[image_id, 'caption']}"
        assert caps.loc[image_id, "class_id"] == row["class_id"]
    assert build_prompt_table(cfg, "tiny-sd", "caption").equals(table)


@pytest.mark.parametrize("args, needle", [
    (["captioner.backend=nope"], "unknown captioner.backend 'nope'"),
    (["captioner.backend=openai"], "captioner.backend=openai needs $OPENAI_API_KEY, which is not set on this machine"),
    (["captioner.backend=openai", "captioner.openai.api_key_env=MY_KEY"], "captioner.backend=openai needs $MY_KEY"),
    (["captioner.backend=local", "captioner.temperature=0.7"], "the local backend decodes greedily"),
    (["captioner.backend=local", "captioner.local.model=/no/such/folder"], "captioner.local.model=/no/such/folder: not a"),
    (["captioner.per_class=0"], "captioner.per_class must be a whole number >= 1 or null"),
    (["captioner.device=tpu"], "unknown captioner.device 'tpu'"),
    (["captioner.openai.base_url=ftp://x"], "is not an http(s) URL"),
    (["captioner.openai.base_url=http://api.example.com/v1"], "is plain http to a public host"),
    (["captioner.openai.detail=ultra"], "unknown captioner.openai.detail 'ultra'"),
    (["prompts.captions=null"], "prompt_style=caption needs prompts.captions="),
])
def test_bad_captioner_config_is_one_line_and_writes_nothing(tmp_path, monkeypatch, args, needle):
    from synthray.sweep.plan import validate

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if "captioner.backend=openai" not in args and "api_key_env" not in " ".join(args):
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(SynthrayError) as err:  # at compose (the schema) or at validation
        validate(tiny_cfg(tmp_path / "runs", "prompts.captions=captioner", "grid.prompt_style=[caption]", *args))
    assert needle in str(err.value) and "\n" not in str(err.value) and KEY not in str(err.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_caption_command_without_key_is_one_line(tmp_path):
    from tests.rig import run_cli

    done = run_cli("caption", f"storage={tmp_path / 'runs'}", env={"OPENAI_API_KEY": ""}, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "synthray: error: captioner.backend=openai needs $OPENAI_API_KEY, which is not set on this machine; export it "
        "here, or on a cluster put it in the cluster's secret store (AWS: SSM parameter /synthray/OPENAI_API_KEY; GCP: "
        "secret synthray-openai-api-key; README, \"Secrets\"), which every node reads when it starts; "
        "captioner.openai.api_key_env names another variable, or use captioner.backend=local")
    assert list(tmp_path.iterdir()) == []


def _png(seed: int) -> bytes:
    import numpy as np

    pixels = (np.random.default_rng(seed).random((24 + seed, 32, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_caption_dataset_keys_hold_the_class_names(tmp_path):
    """The real data's key holds class ids only, but the names are in every caption prompt."""
    from synthray.graph.synthetic import synthetic_artifact

    def key(classes):
        cfg = tiny_cfg(tmp_path, "experiment=paper", f"storage={tmp_path}", f"data.classes={classes}")
        return synthetic_artifact(cfg, "sd15", "caption", None).key

    assert key("tiny-imagenet-200") != key("tiny-imagenet-200-paper")  # "grasshopper" and "grasshoppe"
